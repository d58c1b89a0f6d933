"""`llmos finetune`: check the run here (before any model loads), then run it as a process,
`finetune NAME`, in the daemon if one answers (where `llmos ps`, `top` and `kill` reach it),
else in a kernel booted here; its lines are printed and its steps move a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import llmos
from llmos import finetune
from llmos.apps import daemon_cli, finetune_app, runner
from llmos.finetune import FinetuneJob
from llmos.server.client import DaemonClient, relay
from llmos.syscalls import DEFAULT_APP_CAPS, ExitStatus, InvalidRequest


def check(base: str, data: Path, name: str, *, force: bool, **settings: Any) -> FinetuneJob:
    """The run, checked as the process will check it (settings, name, base, every line of the
    data), so that mistakes are errors here, before a model or a kernel loads."""
    job = finetune.job(base, data, name, force=force, **{k: v for k, v in settings.items() if v is not None})
    finetune.prepare(job)
    return job


async def run(job: FinetuneJob, *, local: bool, out: Console | None = None) -> ExitStatus:
    client = daemon_cli.daemon(local)
    with ProgressConsole(out or runner.stdout_console()) as console:
        if client is not None:
            return await run_in_daemon(client, job, console)
        return await run_here(job, console)


def _arguments(job: FinetuneJob) -> tuple[list[Any], dict[str, Any]]:
    settings = job.settings.model_dump(exclude_defaults=True)
    return [job.base], {"data": str(job.data), "name": job.name, "force": job.force, **settings}


def process_name(job: FinetuneJob) -> str:
    return f"finetune {job.name}"


async def run_here(job: FinetuneJob, console: runner.StdioConsole) -> ExitStatus:
    """In a kernel of this process, without a model of its own (the run loads the base itself);
    Ctrl-C kills the process, which stops the run before its next step."""
    args, kwargs = _arguments(job)
    async with llmos.boot(None, memory=None, mcp_servers=None, embedder=None, durable=None) as kernel:
        kernel.console = console
        proc = await kernel.spawn(finetune_app.main, *args, kwargs=kwargs, name=process_name(job),
                                  caps=DEFAULT_APP_CAPS)
        status = await runner.until_interrupted(kernel.wait(proc.pid))
        if status is None:
            kernel.kill(proc.pid, "interrupted (Ctrl-C)")
            status = await kernel.wait(proc.pid)
        return status


async def run_in_daemon(client: DaemonClient, job: FinetuneJob, console: runner.StdioConsole) -> ExitStatus:
    """In the daemon (on this machine: it reads the data file by its path); Ctrl-C kills it."""
    if not daemon_cli.is_local(client.url):
        raise InvalidRequest(f"the daemon at {client.url} is on another machine: use --local to fine-tune here")
    args, kwargs = _arguments(job)
    info = await client.spawn(finetune_app.APP, args, kwargs, name=process_name(job), caps=DEFAULT_APP_CAPS)
    runner.note(f"fine-tuning in the daemon at {client.url} as process {info.pid} (`llmos kill {info.pid}` stops it)")
    status = await runner.until_interrupted(relay(client, info.pid, console))
    if status is None:
        await client.kill(info.pid, "interrupted (Ctrl-C)")
        status = await client.wait(info.pid)
    return status


class ProgressConsole(runner.StdioConsole):
    """The run's terminal: its lines printed as they come, and a progress bar below them that
    its "step N/M" lines move."""

    def __init__(self, out: Console) -> None:
        super().__init__()
        columns = (TextColumn("fine-tuning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        self.progress = Progress(*columns, console=out)
        self.task = self.progress.add_task("steps", total=None)

    def __enter__(self) -> ProgressConsole:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def write(self, pid: int, text: str) -> None:
        self.keep(pid, text)
        for line in text.splitlines():
            self.progress.console.print(line, markup=False, highlight=False)
            step = finetune_app.step_of(line)
            if step is not None:
                self.progress.update(self.task, completed=step[0], total=step[1])
