"""The shell session: a privileged process on one kernel for its whole life, a prompt, jobs
in the fore- and background.

The shell acts only through its own syscalls (`self.sys`): what it spawns, kills or
searches is checked against its capabilities (SHELL_CAPS) and shows in `trace`. The
launcher (`main`) boots the kernel, attaches the terminal as the kernel's console, and
spawns the shell. Ctrl-C at the prompt clears the line; during a foreground job it kills
that job (the shell goes on). Ctrl-D (or `exit`) ends the session, and with it every process.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, contextmanager
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
from llmos.apps.shell.errors import ShellError
from llmos.apps.shell.jobs import Job, JobTable
from llmos.home import llmos_home
from llmos.server.client import ClientError, DaemonClient, relay, run_remote
from llmos.syscalls import DEFAULT_APP_CAPS, ExitStatus, NoConsole, Sys

PROMPT = "llmos> "
Command = Callable[["Shell", list[str]], Awaitable[None]]
# The shell's rights: what any app has, and control of every process, the user's app files,
# every memory namespace and every tool, which its commands hand on (narrowed) to what it starts.
# The user's own agent: what it starts may be granted any of these (`run --allow CAP`).
SHELL_CAPS = DEFAULT_APP_CAPS | {"proc.admin", "proc.exec", "memory.read.*", "memory.write.*", "tool.*", "net"}


class Shell:
    def __init__(self, model: str | None, out: Console | None = None) -> None:
        from llmos.apps.shell.commands import COMMANDS  # the commands take a Shell

        self.model = model
        self.commands: dict[str, tuple[Command, str]] = COMMANDS
        self.out = out or Console(file=sys.stdout, soft_wrap=True)
        self.jobs = JobTable()
        self.notices: list[str] = []
        self.interrupted = anyio.Event()  # set by Ctrl-C while something runs in the foreground
        self._guarded = False  # a Ctrl-C handler is installed (inside `interruptible`)
        self._sys: Sys | None = None
        self._tg: TaskGroup | None = None
        self.pid_jobs: dict[int, Job] = {}  # each job's process (and, once seen, its descendants)
        self._pids: list[int] = []  # live pids at the last prompt, for completion
        # Against a daemon (`llmos shell` with `llmos serve` running), jobs run there: they
        # start by reference, and this follows each one's output onto the terminal.
        self.follow: Callable[[int], Awaitable[Any]] | None = None
        history = FileHistory(str(llmos_home() / "shell_history"))
        self.prompt = PromptSession(history=history, completer=ShellCompleter(
            lambda: self.commands, lambda: registry.APPS, self._pid_words, self._model_names))
        self.answers: PromptSession[str] = PromptSession()  # questions from processes: no shared history

    @property
    def sys(self) -> Sys:
        """The shell process's syscall handle (while the session runs)."""
        if self._sys is None:
            raise ShellError("the shell is not running as a process")
        return self._sys

    @asynccontextmanager
    async def session(self, sys: Sys) -> AsyncIterator[Shell]:
        """Run as the process `sys` belongs to: its task group holds the jobs' reapers."""
        self._sys = sys
        try:
            async with anyio.create_task_group() as self._tg:
                yield self
                self._tg.cancel_scope.cancel()
        finally:
            self._sys = self._tg = None

    def console(self, process_tree: Callable[[], dict[int, int]]) -> ShellConsole:
        """The terminal as the kernel's console: a job's output goes to the screen or is kept."""
        return ShellConsole(self.pid_jobs, process_tree, self._ask, self.notices.append)

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, sys: Sys) -> None:
        """The shell process's main: the prompt loop, until Ctrl-D or `exit`."""
        async with self.session(sys):
            self.out.print(f"[bold]llmos shell[/] on {self.model or 'no model'}. "
                           "`help` lists the commands; Ctrl-D leaves.")
            while True:
                self.report_finished()
                self._pids = [p.pid for p in await self.sys.ps()]
                try:
                    line = await self.prompt.prompt_async(PROMPT)
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                if not await self.execute(line):
                    break
            self.out.print("bye")

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
        main = registry.bind(app, args, options)  # a usage error stops here
        name = app if app in registry.APPS else None
        registered = anyio.Event()
        if self.follow is None:
            main, registered = _held(main)
            info = await self.sys.spawn(main, *args, name=name, caps=caps)
        else:  # in a daemon: the app goes by reference; its output is replayed to a late follower
            info = await self.sys.spawn(registry.reference(app), *args, kwargs=options, name=name, caps=caps)
        job = self.jobs.add(info.pid, command, background)
        self.pid_jobs[info.pid] = job
        if not background:
            job.foreground.set()
        registered.set()  # only now may it write or ask: the console knows whose job it is
        assert self._tg is not None
        if self.follow is not None:  # first: its output is replayed even if the job is reaped before
            self._tg.start_soon(self.follow, info.pid)
        self._tg.start_soon(self._reap, job)
        return job

    async def _reap(self, job: Job) -> None:
        job.status = await self.sys.wait(job.pid)
        job.done.set()

    async def run_in_foreground(self, app: str, argv: list[str], *, command: str,
                                caps: frozenset[str] = DEFAULT_APP_CAPS) -> None:
        """Start a job and give it the terminal; Ctrl-C kills it from the moment it starts
        (its first output may well prompt one)."""
        with self.interruptible():
            await self.foreground(await self.start(app, argv, background=False, command=command, caps=caps))

    async def foreground(self, job: Job) -> None:
        """Give `job` the terminal until it ends; Ctrl-C kills it."""
        job.foreground.set()
        job.background = False
        self.show(job, job.take_output())
        with self.interruptible() as interrupted:
            async with anyio.create_task_group() as tg:
                async def on_interrupt() -> None:
                    await interrupted.wait()
                    await self.sys.kill(job.pid, "interrupted (Ctrl-C)")

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
        if status.ok and status.result is not None and not job.written.shows(status.result):
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

    @contextmanager
    def interruptible(self) -> Any:
        """While inside, Ctrl-C sets (a fresh) `self.interrupted` instead of ending the shell.
        Nested uses share the outer one's event and handler."""
        loop = _running_loop()
        if self._guarded or loop is None:
            yield self.interrupted
            return
        self.interrupted = anyio.Event()
        loop.add_signal_handler(signal.SIGINT, self.interrupted.set)
        self._guarded = True
        try:
            yield self.interrupted
        finally:
            self._guarded = False
            loop.remove_signal_handler(signal.SIGINT)

    async def _ask(self, question: str) -> str:
        try:
            return await self.answers.prompt_async(question)
        except (EOFError, KeyboardInterrupt):
            self.interrupted.set()
            raise NoConsole("the user gave no answer (Ctrl-C or end of input)") from None

    # -- completion sources ------------------------------------------------------------------
    def _pid_words(self) -> list[str]:
        return [str(pid) for pid in self._pids] + [f"%{n}" for n in self.jobs.jobs]

    @staticmethod
    def _model_names() -> list[str]:
        return [m.name for m in llmos.available_models()]


def _held(main: Callable[..., Awaitable[Any]]) -> tuple[Callable[..., Awaitable[Any]], anyio.Event]:
    """`main`, starting only once the returned event is set (the spawn syscall may yield
    before the shell has recorded the new process as a job)."""
    registered = anyio.Event()

    @functools.wraps(main)
    async def held(sys: Sys, *args: Any) -> Any:
        await registered.wait()
        return await main(sys, *args)

    return held, registered


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
    """`llmos shell`: boot one kernel, attach the terminal, and run the shell as its process."""
    async with llmos.boot(model, policy=policy) as kernel:
        shell = Shell(model)
        kernel.console = shell.console(lambda: {p.pid: p.ppid for p in kernel.ps(include_ended=True)})
        info = await kernel.spawn(shell.run, name="shell", caps=SHELL_CAPS)
        status = await kernel.wait(info.pid)
    return _ended(status)


async def main_on_daemon(client: DaemonClient) -> int:
    """`llmos shell` with a daemon running: the shell runs here as a remote process of the
    daemon's kernel (its syscalls go over HTTP, checked there), so its jobs, `ps` and `top`
    are the daemon's; each job's output is followed onto this terminal."""
    shell = Shell((await client.health()).get("model"))
    console = shell.console(dict)  # only jobs' own output is followed, so no process tree is needed

    async def follow(pid: int) -> None:
        try:
            await relay(client, pid, console)
        except (ClientError, llmos.SyscallError):  # the job ended unseen: the shell's `wait` reports it
            pass

    shell.follow = follow
    status = await run_remote(client.url, shell.run, caps=SHELL_CAPS, name="shell", api_key=client.api_key)
    return _ended(status)


def _ended(status: ExitStatus) -> int:
    if not status.ok:
        print(f"llmos shell: {status.state.name}: {status.reason}", file=sys.stderr)
    return 0 if status.ok else 1
