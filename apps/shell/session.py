"""The shell session: one kernel for its whole life, a prompt, jobs in the fore- and background.

Ctrl-C at the prompt clears the line; during a foreground job it kills that job (the shell
goes on). Ctrl-D (or `exit`) ends the session, and with it every process.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup
from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory
from rich.console import Console

import llmos
from llmos.apps import registry
from llmos.apps.shell.completion import ShellCompleter
from llmos.apps.shell.console import ShellConsole
from llmos.apps.shell.jobs import Job, JobTable
from llmos.home import llmos_home
from llmos.syscalls import DEFAULT_APP_CAPS, NoConsole

PROMPT = "llmos> "
Command = Callable[["Shell", list[str]], Awaitable[None]]


class ShellError(Exception):
    """A command could not be done; its message is the one line the user sees."""


class Shell:
    def __init__(self, kernel: llmos.Kernel, model: str | None, out: Console | None = None) -> None:
        from llmos.apps.shell.commands import COMMANDS  # the commands take a Shell

        self.kernel, self.model = kernel, model
        self.commands: dict[str, tuple[Command, str]] = COMMANDS
        self.out = out or Console(file=sys.stdout, soft_wrap=True)
        self.jobs = JobTable()
        self.notices: list[str] = []
        self.interrupted = anyio.Event()  # set by Ctrl-C while something runs in the foreground
        self._tg: TaskGroup | None = None
        self._pid_jobs: dict[int, Job] = {}
        history = FileHistory(str(llmos_home() / "shell_history"))
        self.prompt = PromptSession(history=history, completer=ShellCompleter(
            lambda: self.commands, lambda: registry.APPS, self._pid_words, self._model_names))
        self.answers: PromptSession[str] = PromptSession()  # questions from processes: no shared history
        kernel.console = ShellConsole(self.job_of, self._ask, self.notices.append)

    # -- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        async with anyio.create_task_group() as self._tg:
            self.out.print(f"[bold]llmos shell[/] on {self.model or 'no model'}. "
                           "`help` lists the commands; Ctrl-D leaves.")
            while True:
                self.report_finished()
                try:
                    line = await self.prompt.prompt_async(PROMPT)
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                if not await self.execute(line):
                    break
            self.out.print("bye")
            self._tg.cancel_scope.cancel()

    async def execute(self, line: str) -> bool:
        """Run one command line; False when the session should end."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.error(f"cannot parse the line: {exc}")
            return True
        if not words:
            return True
        if words[0] in ("exit", "quit", "logout"):
            return False
        entry = self.commands.get(words[0])
        if entry is None:
            self.error(f"unknown command {words[0]!r}; `help` lists them")
            return True
        try:
            await entry[0](self, words[1:])
        except Exception as exc:  # noqa: BLE001 - a command's failure is one line, never the shell's end
            self.error(_one_line(exc))
            if os.environ.get("LLMOS_DEBUG"):
                self.out.print(traceback.format_exc(), markup=False, highlight=False)
        return True

    def error(self, message: str) -> None:
        self.out.print(f"[bold red]error:[/] {message}", highlight=False)

    # -- jobs -----------------------------------------------------------------------------------
    async def start(self, app: str, argv: list[str], *, background: bool, command: str,
                    caps: frozenset[str] = DEFAULT_APP_CAPS) -> Job:
        args, options = registry.parse_argv(argv)
        main = registry.bind(app, args, options)
        name = app if app in registry.APPS else None
        info = await self.kernel.spawn(main, *args, name=name, caps=caps)
        job = self.jobs.add(info.pid, command, background)
        self._pid_jobs[info.pid] = job
        if not background:
            job.foreground.set()
        assert self._tg is not None
        self._tg.start_soon(self._reap, job)
        return job

    async def _reap(self, job: Job) -> None:
        job.status = await self.kernel.wait(job.pid)
        job.done.set()

    async def foreground(self, job: Job) -> None:
        """Give `job` the terminal until it ends; Ctrl-C kills it."""
        job.foreground.set()
        job.background = False
        self.show(job, job.take_output())
        with self.interruptible() as interrupted:
            async with anyio.create_task_group() as tg:
                async def on_interrupt() -> None:
                    await interrupted.wait()
                    self.kernel.kill(job.pid, "interrupted (Ctrl-C)")

                tg.start_soon(on_interrupt)
                await job.done.wait()
                tg.cancel_scope.cancel()
        job.notified = True
        self.report(job)

    def report(self, job: Job, background: bool = False) -> None:
        status = job.status
        assert status is not None
        if background:
            reason = "" if status.ok else f"  ({status.reason})"
            self.out.print(f"[{job.number}]  {job.state:<8} {job.command}{reason}", markup=False, highlight=False)
            self.show(job, job.take_output())
        if status.ok and status.result is not None and not job.wrote:
            result = status.result
            self.out.print(result if isinstance(result, str) else repr(result), markup=False)
        elif not status.ok and not background:
            self.error(f"process {status.pid} ({status.name}) {status.state.name}: {status.reason}")

    @staticmethod
    def show(job: Job, text: str) -> None:
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()

    def report_finished(self) -> None:
        for notice in self.notices:
            self.out.print(notice, markup=False, highlight=False)
        self.notices.clear()
        for job in self.jobs.finished_unreported():
            job.notified = True
            self.report(job, background=True)
        self.jobs.forget_reported()

    def job_of(self, pid: int) -> Job | None:
        """The job a process belongs to: the one it is, or the one its ancestor is."""
        if pid in self._pid_jobs:
            return self._pid_jobs[pid]
        parents = {p.pid: p.ppid for p in self.kernel.ps(include_ended=True)}
        seen = pid
        while seen in parents and seen not in self._pid_jobs:
            seen = parents[seen]
        job = self._pid_jobs.get(seen)
        if job is not None:
            self._pid_jobs[pid] = job
        return job

    @contextmanager
    def interruptible(self) -> Any:
        """While inside, Ctrl-C sets (a fresh) `self.interrupted` instead of ending the shell."""
        self.interrupted = anyio.Event()
        loop = _running_loop()
        if loop is None:
            yield self.interrupted
            return
        loop.add_signal_handler(signal.SIGINT, self.interrupted.set)
        try:
            yield self.interrupted
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    async def _ask(self, question: str) -> str:
        try:
            return await self.answers.prompt_async(question)
        except (EOFError, KeyboardInterrupt):
            self.interrupted.set()
            raise NoConsole("the user gave no answer (Ctrl-C or end of input)") from None

    # -- completion sources ------------------------------------------------------------------
    def _pid_words(self) -> list[str]:
        return [str(p.pid) for p in self.kernel.ps()] + [f"%{n}" for n in self.jobs.jobs]

    @staticmethod
    def _model_names() -> list[str]:
        return [m.name for m in llmos.available_models()]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(exc, (ShellError, LookupError, llmos.SyscallError, llmos.ConfigError)) or type(exc).__name__ in (
            "WorkflowError", "UnknownModel", "ModelUnavailable"):
        return message.strip("'\"") if isinstance(exc, KeyError) else message
    return f"{type(exc).__name__}: {message} (LLMOS_DEBUG=1 shows the traceback)"


def _running_loop() -> Any:
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop if sys.platform != "win32" else None


async def main(model: str | None = "smollm2", policy: str = "fifo") -> int:
    """`llmos shell`: boot one kernel and run the session on it."""
    async with llmos.boot(model, policy=policy) as kernel:
        await Shell(kernel, model).run()
    return 0
