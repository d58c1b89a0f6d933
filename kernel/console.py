"""The user at the terminal, as the kernel sees it: where processes write and whom they ask.

The kernel holds at most one `Console` (`kernel.console`), plugged in by whoever owns the
terminal: `llmos run` (stdin/stdout) or the shell (which routes a job's output to the screen
while it is in the foreground and buffers it otherwise). Without one, writes are dropped,
as to /dev/null, and questions fail with `NoConsole`.
"""

from __future__ import annotations

from typing import Protocol


class Console(Protocol):
    def write(self, pid: int, text: str) -> None:
        """Show `text`, written by process `pid`, to the user (no newline is added)."""

    async def ask(self, pid: int, question: str) -> str:
        """Put `question` from process `pid` to the user and return their answer.
        Raise `NoConsole` when nobody can answer (stdin closed)."""
