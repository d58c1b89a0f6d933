"""What the daemon shows of the kernel: its figures, its syscall trace, a live event stream of
both, and the dashboard page that draws them.

Every figure is read with a syscall of the daemon process (`stats`, `ps`, `trace`), so it is
checked and traced like any other action of the HTTP API.

- `GET /v1/stats`: the kernel's `KernelStatistics`, as `sys.stats()` returns it.
- `GET /v1/trace?limit=N&pid=P`: the most recent syscalls, oldest first.
- `GET /v1/events`: server-sent events, one `snapshot` a second (see `snapshot`), until the
  client leaves; what the dashboard draws, without polling endpoint after endpoint.
- `GET /`: the dashboard (static/index.html, dashboard.js, dashboard.css: no build step, no
  CDN). `GET /?key=KEY` sets the `llmos_key` cookie (the page's EventSource cannot send a
  header) and redirects to `/`, so the key leaves the address bar at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from llmos.server import auth, errors
from llmos.server.gateway import Gateway
from llmos.syscalls import KernelStatistics, ProcessInfo, TraceEvent

router = APIRouter()
STATIC = Path(__file__).parent / "static"
# The files the page is made of, and their media types: nothing else under static/ is served.
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
EVENT_INTERVAL_S = 1.0  # between two snapshots of /v1/events
TRACE_LIMIT = 1000  # events /v1/trace returns when the client names no limit


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


# -- JSON shapes ------------------------------------------------------------------------------------
def process_json(info: ProcessInfo) -> dict[str, Any]:
    """A process as /v1/processes shows it (ProcessInfo, which validates it back), plus what
    the page shows: its state by name, its runtime and its tokens."""
    found = info.model_dump(mode="json")
    found.update(state_name=info.state.name, runtime_s=info.runtime_s, tokens=info.stats.tokens)
    return found


def event_json(event: TraceEvent) -> dict[str, Any]:
    return event._asdict()


def prefix_cache_hit_rate(stats: KernelStatistics) -> float | None:
    """The share of prompt tokens the engine took from its prefix cache instead of computing
    them (the transformers driver's `prefix_hit_tokens` / `prefix_miss_tokens` counters); None
    for a driver without a prefix cache, or before any prompt."""
    counters = stats.generation.driver if stats.generation is not None else {}
    hits, misses = counters.get("prefix_hit_tokens"), counters.get("prefix_miss_tokens")
    if hits is None or misses is None or hits + misses == 0:
        return None
    return hits / (hits + misses)


async def snapshot(gateway: Gateway) -> dict[str, Any]:
    """One frame of the dashboard: the kernel's figures, derived ones, and every process."""
    stats = await gateway.sys.stats()
    processes = await gateway.sys.ps(include_ended=True)
    return {"at": time.time(), "model": gateway.model, "daemon_pid": gateway.sys.pid,
            "uptime_s": time.time() - stats.booted_at, "prefix_cache_hit_rate": prefix_cache_hit_rate(stats),
            "stats": stats.model_dump(mode="json"), "processes": [process_json(p) for p in processes]}


# -- the endpoints ----------------------------------------------------------------------------------
@router.get("/v1/stats")
async def stats(request: Request) -> dict[str, Any]:
    return (await _gateway(request).sys.stats()).model_dump(mode="json")


@router.get("/v1/trace")
async def trace(request: Request, limit: Annotated[int, Query(ge=1)] = TRACE_LIMIT,
                pid: int | None = None) -> dict[str, Any]:
    events = await _gateway(request).sys.trace(pid, limit=limit)  # the syscall bounds `limit`
    return {"object": "list", "data": [event_json(e) for e in events]}


@router.get("/v1/events")
async def events(request: Request, interval: Annotated[float, Query(ge=0.1, le=60)] = EVENT_INTERVAL_S) -> Response:
    gateway = _gateway(request)
    first = await snapshot(gateway)  # a syscall error is an HTTP error while one can still be sent
    return StreamingResponse(_frames(gateway, first, interval), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _frames(gateway: Gateway, first: dict[str, Any], interval: float) -> AsyncIterator[str]:
    """`snapshot` events until the client leaves: Starlette then cancels this generator (it
    listens for the disconnect while it streams), as the server's shutdown does."""
    yield f"retry: 2000\nevent: snapshot\ndata: {json.dumps(first)}\n\n"
    while True:
        await anyio.sleep(interval)
        yield f"event: snapshot\ndata: {json.dumps(await snapshot(gateway))}\n\n"


# -- the page ---------------------------------------------------------------------------------------
@router.get("/", response_model=None)
async def dashboard(request: Request, key: str | None = None) -> Response:
    if key is not None:  # auth.check has compared it already: a wrong key never gets here
        answer = RedirectResponse("/", status_code=303)
        if request.app.state.api_key is not None:
            answer.set_cookie(auth.COOKIE, auth.cookie_value(key), httponly=True, samesite="strict", path="/")
        return answer
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-store"})


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise errors.APIError(404, f"no static file {name!r}", code="not_found")
    return FileResponse(STATIC / name, media_type=media_type, headers={"Cache-Control": "no-cache"})
