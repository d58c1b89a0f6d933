"""The user's terminal: write text to it, ask the user a question and wait for the answer.

Both go to `kernel.console` (see llmos.kernel.console). With no console attached, a write
is dropped (as to /dev/null) and a question fails with `NoConsole` (ENOTTY).
"""

from __future__ import annotations

from typing import ClassVar

import anyio
from pydantic import Field

from llmos.kernel import capabilities
from llmos.kernel.abi import Request
from llmos.kernel.errors import NoConsole, Timeout
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import Process


class Write(Request[None]):
    """Show text to the user (the terminal of `llmos run` or the shell); no newline is added."""

    call: ClassVar[str] = "write"
    replay_matches_arguments: ClassVar[bool] = False  # its answer is None, whatever it writes
    capability: ClassVar[str | None] = capabilities.CONSOLE
    positional: ClassVar[tuple[str, ...]] = ("text",)

    text: str


class AskUser(Request[str]):
    """Ask the user a question and wait for the answer (a human-in-the-loop step)."""

    call: ClassVar[str] = "ask_user"
    capability: ClassVar[str | None] = capabilities.CONSOLE
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("question",)

    question: str = Field(min_length=1)
    timeout: float | None = Field(default=None, gt=0)


async def sys_write(kernel: Kernel, caller: Process, req: Write) -> None:
    if kernel.console is not None and req.text:
        kernel.console.write(caller.pid, req.text)


async def sys_ask_user(kernel: Kernel, caller: Process, req: AskUser) -> str:
    if kernel.console is None:
        raise NoConsole(f"process {caller.pid} ({caller.name}) asked the user a question, but no terminal is "
                        "attached to this kernel; run it from `llmos run` or the shell")
    with anyio.move_on_after(req.timeout):
        return await kernel.console.ask(caller.pid, req.question)
    raise Timeout(f"the user did not answer within {req.timeout} s")


HANDLERS = {Write: sys_write, AskUser: sys_ask_user}
