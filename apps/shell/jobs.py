"""Jobs: the processes the shell started, each with its number, command line and output."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from llmos.apps.runner import OutputTail
from llmos.syscalls import ExitStatus


@dataclass(eq=False)
class Job:
    number: int
    pid: int
    command: str
    background: bool
    output: list[str] = field(default_factory=list)  # written while in the background, not shown yet
    written: OutputTail = field(default_factory=OutputTail)  # the end of what it wrote
    status: ExitStatus | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    foreground: anyio.Event = field(default_factory=anyio.Event)  # set while it owns the terminal
    notified: bool = False  # its end was reported

    @property
    def state(self) -> str:
        if self.status is not None:
            return self.status.state.name.capitalize() if not self.status.ok else "Done"
        return "Running"

    def take_output(self) -> str:
        text, self.output = "".join(self.output), []
        return text


class JobTable:
    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}

    def add(self, pid: int, command: str, background: bool) -> Job:
        """A job numbered as a shell numbers them: one past the highest in the table (so the
        first job after the table emptied is %1 again)."""
        job = Job(max(self.jobs, default=0) + 1, pid, command, background)
        self.jobs[job.number] = job
        return job

    def find(self, ref: str | None) -> Job:
        """A job by "%N", "N" (job number) or pid ("pid N" when no job has that number), or
        the most recent live job when `ref` is None."""
        if ref is None:
            live = [j for j in self.jobs.values() if j.status is None]
            if not live:
                raise LookupError("no current job")
            return live[-1]
        number = ref.removeprefix("%")
        if not number.isdigit():
            raise LookupError(f"{ref!r} is not a job (use %N or a pid)")
        n = int(number)
        if ref.startswith("%") or n in self.jobs:
            if n not in self.jobs:
                raise LookupError(f"no job %{n}")
            return self.jobs[n]
        job = next((j for j in self.jobs.values() if j.pid == n), None)
        if job is None:
            raise LookupError(f"no job with pid {n}")
        return job

    def finished_unreported(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.status is not None and not j.notified]

    def forget_reported(self) -> None:
        self.jobs = {n: j for n, j in self.jobs.items() if not (j.notified and j.status is not None)}
