"""The shell's side of `kernel.console`: a job's output reaches the screen while the job is
in the foreground and is kept for later otherwise; questions wait for the foreground."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

from llmos.apps.shell.jobs import Job
from llmos.syscalls import NoConsole

Ask = Callable[[str], Awaitable[str]]  # puts a question on the terminal, returns the typed answer


class ShellConsole:
    """`jobs`: the shell's jobs by pid (this console adds their descendants as it meets
    them). `process_tree`: pid -> parent pid of every process, given by whoever attaches
    the terminal to the kernel, so output from a job's children reaches the job."""

    def __init__(self, jobs: dict[int, Job], process_tree: Callable[[], dict[int, int]], ask: Ask,
                 notice: Callable[[str], None]) -> None:
        self._jobs = jobs
        self._tree = process_tree
        self._ask = ask
        self._notice = notice

    def _job_of(self, pid: int) -> Job | None:
        """The job a process belongs to: the one it is, or the one its ancestor is."""
        if pid in self._jobs:
            return self._jobs[pid]
        parents, seen = self._tree(), pid
        while seen in parents and seen not in self._jobs:
            seen = parents[seen]
        job = self._jobs.get(seen)
        if job is not None:
            self._jobs[pid] = job
        return job

    def write(self, pid: int, text: str) -> None:
        job = self._job_of(pid)
        if job is not None:
            job.written.add(text)
            if not job.foreground.is_set():
                job.output.append(text)
                return
        sys.stdout.write(text)
        sys.stdout.flush()

    async def ask(self, pid: int, question: str) -> str:
        job = self._job_of(pid)
        if job is None:
            raise NoConsole(f"process {pid} is not one of the shell's jobs")
        if not job.foreground.is_set():
            self._notice(f"[{job.number}] {job.command} is waiting for input: `fg %{job.number}` to answer")
            await job.foreground.wait()
        return await self._ask(question)
