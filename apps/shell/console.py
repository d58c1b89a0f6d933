"""The shell's side of `kernel.console`: a job's output reaches the screen while the job is
in the foreground and is kept for later otherwise; questions wait for the foreground."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

from llmos.apps.shell.jobs import Job
from llmos.syscalls import NoConsole

Ask = Callable[[str], Awaitable[str]]  # puts a question on the terminal, returns the typed answer


class ShellConsole:
    def __init__(self, job_of: Callable[[int], Job | None], ask: Ask, notice: Callable[[str], None]) -> None:
        self._job_of = job_of
        self._ask = ask
        self._notice = notice

    def write(self, pid: int, text: str) -> None:
        job = self._job_of(pid)
        if job is not None:
            job.wrote = True
            if not job.foreground.is_set():
                job.output.append(text)
                return
        sys.stdout.write(text)
        sys.stdout.flush()

    async def ask(self, pid: int, question: str) -> str:
        job = self._job_of(pid)
        if job is None:
            raise NoConsole(f"process {pid} is not one of the shell's jobs")
        job.wrote = True
        if not job.foreground.is_set():
            self._notice(f"[{job.number}] {job.command} is waiting for input: `fg %{job.number}` to answer")
            await job.foreground.wait()
        return await self._ask(question)
