"""`llmos run`: boot a kernel, run one app as a process, report how it ended."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console

import llmos
from llmos.syscalls import DEFAULT_APP_CAPS, ExitStatus, ProcState

# Exit codes of `llmos run`, like a shell's: 0 when the process exited, 1 when it failed,
# 128 + SIGKILL when it was killed (a quota or deadline, for example).
EXIT_CODES = {ProcState.EXITED: 0, ProcState.FAILED: 1, ProcState.KILLED: 137}


async def run_app(app: str, args: list[str], *, model: str | None, policy: str, caps: frozenset[str],
                  quotas: dict[str, Any]) -> ExitStatus:
    async with llmos.boot(model, policy=policy) as kernel:
        proc = await kernel.spawn(app, *args, caps=caps, quotas=llmos.Quotas(**quotas))
        return await kernel.wait(proc.pid)


def report(status: ExitStatus, out: Console, err: Console) -> int:
    """Print the process's result (or why it did not finish) and return the exit code."""
    if status.ok:
        if status.result is not None:
            out.print(status.result if isinstance(status.result, str) else repr(status.result), markup=False)
    else:
        err.print(f"[bold red]process {status.pid} ({status.name}) {status.state.name}:[/] {status.reason}")
        if status.traceback and os.environ.get("LLMOS_DEBUG"):
            err.print(status.traceback, markup=False, highlight=False)
        elif status.traceback:
            err.print("[dim]set LLMOS_DEBUG=1 for the traceback[/]")
    return EXIT_CODES[status.state]


def stdout_console() -> Console:
    return Console(file=sys.stdout, soft_wrap=True)
