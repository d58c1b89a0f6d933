"""The durable-process commands: `llmos run --durable`, `llmos ps --durable`, `llmos resume
ID`, `llmos cancel ID`. With a daemon (`llmos serve`) they act on it; without one, a kernel
boots in this process on the same LLMOS_HOME (the durable record is there)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

import llmos
from llmos.home import has_durable_record, llmos_home
from llmos.apps import registry, runner
from llmos.apps.shell import views
from llmos.server.client import DaemonClient, relay
from llmos.syscalls import DurableInfo, ExitStatus, Quotas, RestartPolicy

LEFT_NOTE = ("durable process {id} goes on {where}: `llmos ps --durable` shows it, `llmos cancel {id}` stops it")


# -- run --------------------------------------------------------------------------------------------
async def run_local(app: str, argv: list[str], *, model: str | None, policy: str, caps: frozenset[str],
                    quotas: dict[str, Any], restart: RestartPolicy | None,
                    console: runner.StdioConsole) -> ExitStatus | None:
    """Run APP durably in a kernel booted here, until it ends (restarts included). Ctrl-C
    leaves it unfinished: the next boot on this LLMOS_HOME resumes it. None then."""
    positional, options = registry.parse_argv_portable(argv)
    registry.bind(app, positional, options)  # a usage error stops here, before the model loads
    ref = registry.reference(app)
    name = app if app in registry.APPS else None
    async with llmos.boot(model, policy=policy) as kernel:
        kernel.console = console
        runner.announce_resumed(kernel)
        info = await kernel.spawn(ref, *positional, kwargs=options, name=name, caps=caps,
                                  quotas=llmos.Quotas(**quotas), durable=True, restart=restart)
        assert info.durable_id is not None
        runner.note(f"durable process {info.durable_id} (pid {info.pid})")
        status = await runner.until_interrupted(kernel.durability.wait(info.durable_id))
        if status is None:
            runner.note(f"durable process {info.durable_id} is unfinished: the next `llmos run`, `llmos serve` or "
                        f"`llmos resume {info.durable_id}` on this LLMOS_HOME goes on from where it stopped")
            return None
        await runner.wait_resumed(kernel)
        return status


async def run_in_daemon(client: DaemonClient, app: str, argv: list[str], *, model: str | None,
                        caps: frozenset[str], quotas: dict[str, Any], restart: RestartPolicy | None,
                        console: runner.StdioConsole) -> ExitStatus | None:
    """Start APP durably in the daemon (on `model`, or the daemon's), show its output until it
    ends; Ctrl-C leaves it running there (it is durable: it does not depend on this terminal)."""
    positional, options = registry.parse_argv_portable(argv)
    name = app if app in registry.APPS else None
    info = await client.spawn(registry.reference(app), positional, options, name=name, caps=caps,
                              quotas=Quotas(**quotas), durable=True, restart=restart, model=model)
    assert info.durable_id is not None
    durable_id = info.durable_id
    if info.pid:
        runner.note(f"durable process {durable_id} (pid {info.pid} in {client.url})")
    else:  # a cluster's kernel with room runs it: its output is there
        runner.note(f"durable process {durable_id} is queued for a kernel of the cluster; its output is that "
                    "kernel's (`llmos ps --durable` says which)")

    async def follow() -> ExitStatus:
        if info.pid:
            await relay(client, info.pid, console)
        return await client.durable_wait(durable_id)

    status = await runner.until_interrupted(follow())
    if status is None:
        runner.note(LEFT_NOTE.format(id=durable_id, where=f"in the daemon at {client.url}"))
    return status


# -- ps, resume, cancel -------------------------------------------------------------------------------
async def ps(client: DaemonClient | None, out: Console) -> None:
    if client is not None:
        infos, where = await client.durable_ps(), client.url
    elif not has_durable_record(llmos_home()):
        infos, where = [], "LLMOS_HOME"  # none ever ran here: no kernel (and no database) for nothing
    else:
        async with llmos.boot(None, memory=None, mcp_servers=None, embedder=None, resume=False) as kernel:
            infos, where = await kernel.durability.list(), "LLMOS_HOME"
    out.print(views.durable_table(infos, title=f"durable processes ({where})"))


async def resume(client: DaemonClient | None, durable_id: str, *, model: str | None, console: runner.StdioConsole
                 ) -> ExitStatus | None:
    """Resume ID: in the daemon (then return at once), or in a kernel booted here, until it ends."""
    if client is not None:
        info = await client.durable_resume(durable_id)
        runner.note(f"durable process {info.id} resumed in the daemon at {client.url} ({info.state.value})")
        return None
    async with llmos.boot(model) as kernel:  # any boot resumes what dead kernels left, its children too
        kernel.console = console
        if durable_id not in kernel.durability.resumed:
            await kernel.durability.resume(durable_id)
        status = await runner.until_interrupted(kernel.durability.wait(durable_id))
        if status is None:
            runner.note(f"durable process {durable_id} is unfinished again")
        return status


async def cancel(client: DaemonClient | None, durable_id: str, reason: str) -> DurableInfo:
    if client is not None:
        return await client.durable_cancel(durable_id, reason)
    async with llmos.boot(None, memory=None, mcp_servers=None, embedder=None, resume=False) as kernel:
        await kernel.durability.cancel(durable_id, reason)
        return await kernel.durability.info(durable_id)


__all__ = ["cancel", "ps", "resume", "run_in_daemon", "run_local"]
