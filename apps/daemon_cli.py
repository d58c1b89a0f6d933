"""The `llmos` commands as clients of a running daemon (`llmos serve`), as `docker` is of
dockerd: `run` starts the app in the daemon and shows its output as it comes; `ps`, `kill`,
`top` and `logs` act on the daemon's processes. Every action is an HTTP call of
llmos.server.client; the daemon checks it as a syscall of its own process."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
from rich.console import Console
from rich.live import Live

from llmos.apps import registry, runner
from llmos.apps.shell import views
from llmos.server import wire
from llmos.server.client import DaemonClient, find_daemon, relay, run_remote
from llmos.syscalls import ExitStatus, InvalidRequest, Quotas

TOP_REFRESH_S = 1.0


def daemon(local: bool = False) -> DaemonClient | None:
    """The daemon to use: the one at LLMOS_URL (else the local default) if it answers, unless
    `local` asks for an in-process kernel. A daemon that refuses the key is an error."""
    return None if local else find_daemon()


async def run_in_daemon(client: DaemonClient, app: str, argv: list[str], *, model: str | None,
                        caps: frozenset[str], quotas: dict[str, Any], console: runner.StdioConsole) -> ExitStatus:
    """Start APP in the daemon and relay its output and questions here until it ends;
    Ctrl-C kills it (as it would a process of an in-process kernel)."""
    positional, options = registry.parse_argv_portable(argv)
    name = app if app in registry.APPS else None
    ref = registry.portable(app)
    if ref != app and not is_local(client.url):
        raise InvalidRequest(f"{app} is a file here, and the daemon at {client.url} is on another machine: "
                             f"use `llmos run --remote {client.url} {app}` to run it here with its syscalls there")
    info = await client.spawn(ref, positional, options, name=name, caps=caps, quotas=quotas, model=model)
    status = await runner.until_interrupted(relay(client, info.pid, console))
    if status is None:  # Ctrl-C
        await client.kill(info.pid, "interrupted (Ctrl-C)")
        status = await client.wait(info.pid)
    return status


def is_local(url: str) -> bool:
    """Whether the daemon at `url` is on this machine (it reads the same files)."""
    return wire.is_loopback(httpx.URL(url).host)


async def run_remote_app(url: str, app: str, argv: list[str], *, caps: frozenset[str], quotas: dict[str, Any],
                         console: runner.StdioConsole) -> ExitStatus:
    """`llmos run --remote URL APP`: the app runs here, its syscalls in the daemon at URL."""
    positional, options = registry.parse_argv(argv)
    name = app if app in registry.APPS else None
    return await run_remote(url, registry.lookup(app), positional, options, caps=caps, quotas=Quotas(**quotas),
                            name=name, console=console)


async def ps(client: DaemonClient, include_ended: bool, out: Console) -> None:
    out.print(views.ps_table(await client.ps(include_ended), title=f"processes of {client.url}"))


async def kill(client: DaemonClient, pids: list[int], reason: str) -> None:
    for pid in pids:
        await client.kill(pid, reason)


async def logs(client: DaemonClient, pid: int, follow: bool, console: runner.StdioConsole) -> ExitStatus | None:
    """What PID wrote; with `follow`, then what it writes until it ends (returns how)."""
    if not follow:
        console.write(pid, await client.logs(pid))
        return None
    return await relay(client, pid, console)


async def top(client: DaemonClient, out: Console, count: int | None) -> None:
    """A live view of the daemon's processes and engine until Ctrl-C (or `count` frames)."""
    model = (await client.health()).get("model") or "-"
    meter = views.Meter()

    async def view() -> Any:
        stats, procs = await client.stats(), await client.ps(include_ended=True)
        rate = stats.generation.tokens_per_s if stats.generation is not None else meter.rate(procs)
        return views.top_view(procs, stats, rate, model)

    shown = 0
    with Live(await view(), console=out, auto_refresh=False) as live:
        while count is None or shown < count - 1:
            await anyio.sleep(TOP_REFRESH_S)
            live.update(await view(), refresh=True)
            shown += 1
