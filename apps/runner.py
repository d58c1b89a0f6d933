"""`llmos run`: boot a kernel, run one app as a process, report how it ended."""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from typing import Any

import anyio.to_thread
from rich.console import Console

import llmos
from llmos.apps import registry
from llmos.syscalls import ExitStatus, NoConsole, ProcState

# Exit codes of `llmos run`, like a shell's: 0 when the process exited, 1 when it failed,
# 128 + SIGKILL when it was killed (a quota or deadline, for example).
EXIT_CODES = {ProcState.EXITED: 0, ProcState.FAILED: 1, ProcState.KILLED: 137}


# Characters of each process's output kept, to tell whether its result is what it streamed.
WRITTEN_KEPT = 1 << 20


class OutputTail:
    """The last WRITTEN_KEPT (or a few more) characters of a process's output, kept in pieces
    so that a reply written a token at a time costs no copying."""

    def __init__(self) -> None:
        self.pieces: deque[str] = deque()
        self.size = 0

    def add(self, text: str) -> None:
        self.pieces.append(text)
        self.size += len(text)
        while len(self.pieces) > 1 and self.size - len(self.pieces[0]) >= WRITTEN_KEPT:
            self.size -= len(self.pieces.popleft())

    def text(self) -> str:
        return "".join(self.pieces)

    def shows(self, result: object) -> bool:
        """Whether `result` is the text written last (a reply streamed as it came, then
        returned), so that printing it would show it twice."""
        return isinstance(result, str) and self.text().rstrip().endswith(result.strip())


class StdioConsole:
    """The kernel's console for `llmos run`: processes write to stdout, questions read stdin."""

    def __init__(self) -> None:
        self.written: dict[int, OutputTail] = {}  # by pid: the end of what it wrote
        self.mid_line = False  # the terminal's cursor is not at a line's start

    def write(self, pid: int, text: str) -> None:
        self.keep(pid, text)
        sys.stdout.write(text)
        sys.stdout.flush()

    def keep(self, pid: int, text: str) -> None:
        """Note what `pid` wrote (however it was shown)."""
        if text:
            self.written.setdefault(pid, OutputTail()).add(text)
            self.mid_line = not text.endswith("\n")

    async def ask(self, pid: int, question: str) -> str:
        try:
            answer = await anyio.to_thread.run_sync(input, question, abandon_on_cancel=True)
        except EOFError:
            raise NoConsole("standard input is closed; nobody can answer") from None
        self.mid_line = bool(question) and not sys.stdin.isatty()  # a terminal echoes the answer's newline
        return answer

    def streamed(self, status: ExitStatus) -> bool:
        """Whether the process's result is the text it wrote last (a reply it streamed as it
        came, then returned): shown once already."""
        tail = self.written.get(status.pid)
        return tail is not None and tail.shows(status.result)


async def run_app(app: str, args: list[str], *, model: str | None, policy: str, caps: frozenset[str],
                  quotas: dict[str, Any], console: StdioConsole | None = None) -> ExitStatus:
    """Run a registered app by name, or a file or module reference, with command-line words
    `args` (`--name value` words become keyword arguments)."""
    positional, options = registry.parse_argv(args)
    main = registry.bind(app, positional, options)  # a usage error stops here, before the model loads
    async with llmos.boot(model, policy=policy) as kernel:
        kernel.console = console
        name = app if app in registry.APPS else None
        announce_resumed(kernel)
        proc = await kernel.spawn(main, *positional, name=name, caps=caps, quotas=llmos.Quotas(**quotas))
        status = await kernel.wait(proc.pid)
        await wait_resumed(kernel)
        return status


def note(text: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[dim]{text}[/]")


async def until_interrupted(work: Any) -> Any:
    """`await work`, or None on Ctrl-C (SIGINT), which then cancels it."""
    outcome: list[Any] = [None]
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            async def interrupt() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

            async def run() -> None:
                outcome[0] = await work
                tg.cancel_scope.cancel()

            tg.start_soon(interrupt)
            tg.start_soon(run)
    return outcome[0]


def announce_resumed(kernel: Any) -> None:
    """Say which unfinished durable processes this boot took over."""
    durability = getattr(kernel, "durability", None)
    for durable_id in getattr(durability, "resumed", []):
        note(f"resumed durable process {durable_id} (it was unfinished)")


async def wait_resumed(kernel: Any) -> None:
    """A kernel booted by `llmos run` finishes the durable work it resumed before it leaves
    (Ctrl-C leaves that unfinished again)."""
    durability = getattr(kernel, "durability", None)
    resumed = list(getattr(durability, "resumed", []))
    if not resumed:
        return
    note(f"waiting for {len(resumed)} resumed durable process(es) to end (Ctrl-C leaves them unfinished)")

    async def all_of() -> bool:
        for durable_id in resumed:
            await durability.wait(durable_id)
        return True

    await until_interrupted(all_of())


def report(status: ExitStatus, out: Console, err: Console, console: StdioConsole | None = None,
           shown: bool = False) -> int:
    """Print the process's result (unless it was `shown` already, or it is what the process
    streamed to `console`, the run's console, as it ran), or why it did not finish, and
    return the exit code."""
    if status.ok:
        if status.result is not None and not shown and not (console is not None and console.streamed(status)):
            if console is not None and console.mid_line:  # after a question or a write without a newline
                out.print()
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
