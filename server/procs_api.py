"""The process API: spawn a registered app (or an app reference) with arguments, list the
processes, wait for one, follow its output, kill, suspend, resume or renice it, read its
syscall trace. JSON in, JSON out (`ProcessInfo`, `ExitStatus`, `TraceEvent` shapes).

Every action is a syscall of the daemon process `llmosd` (`gateway.sys`), so the kernel
checks and traces it as any other; a spawned app is a child of llmosd with the
capabilities asked for (DEFAULT_APP_CAPS unless told), never more than llmosd's.

Processes end as zombies until someone waits for them, as on Unix. `wait` here reaps the
process, and so does following the output of a process this API started (llmosd is its
parent) to its end; the API keeps the latest statuses it collected (`ExitLedger`), so a
`wait` after the output stream ended, or a second `wait`, still gets the answer. Another
process's child is left for its parent to reap: its output stream ends without a result.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llmos import plugins
from llmos.server import errors, wire
from llmos.server.console import DaemonConsole
from llmos.syscalls import (
    DEFAULT_APP_CAPS, ExitStatus, NoSuchProcess, ProcessInfo, Quotas, RestartPolicy, Sys, SyscallError)

router = APIRouter(prefix="/v1/processes")
KEPT_STATUSES = 1024  # exit statuses the API remembers after reaping, latest first
ZOMBIE_GRACE_S = 60.0  # an ended process the API started and nobody collected is reaped this long after
REAP_INTERVAL_S = 10.0  # how often llmosd looks for such processes
WATCHER_CAPS = frozenset({"proc.admin"})  # what the process following another's end needs: wait for it
REAP_TIMEOUT_S = 5.0  # to end and reap a watcher whose follower left
FOREIGN_POLL_S = 0.5  # how often the end of a process this API did not start is looked for in `ps`


# -- bodies ------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpawnBody(_Body):
    app: str = Field(min_length=1)  # a registered app's name, "module:attr" or "path/app.py:attr" (daemon's cwd)
    args: list[Any] = Field(default_factory=list)  # JSON values, after `sys`
    kwargs: dict[str, Any] = Field(default_factory=dict)  # the app's keyword arguments
    name: str | None = Field(default=None, min_length=1, max_length=128)
    caps: list[str] | None = None  # narrowed by llmosd's; default DEFAULT_APP_CAPS
    quotas: Quotas | None = None
    priority: int | None = None  # the nice value; default llmosd's own
    durable: bool = False  # it survives the daemon: recorded, resumed at the next boot (see /v1/durable)
    restart: RestartPolicy | None = None  # supervision: restart it when it ends, as the policy says
    model: str | None = Field(default=None, min_length=1, max_length=128)  # default: the daemon's model


class KillBody(_Body):
    reason: str | None = Field(default=None, max_length=1000)


class NiceBody(_Body):
    priority: int


class AnswerBody(_Body):
    text: str | None  # None: the client cannot answer (its stdin is closed); the question fails with NoConsole
    id: int | None = None  # the question's id (from the output stream); needed only when several are open


# -- state -------------------------------------------------------------------------------------
class ExitLedger:
    """The exit statuses the API collected (and so reaped), the latest KEPT_STATUSES."""

    def __init__(self, console: DaemonConsole, owned: set[int]) -> None:
        self._console = console
        self._owned = owned  # ProcsState.owned: a collected process is no longer the API's to reap
        self._statuses: OrderedDict[int, ExitStatus] = OrderedDict()

    def get(self, pid: int) -> ExitStatus | None:
        return self._statuses.get(pid)

    async def sweep(self, sys: Sys) -> None:
        """Collect what the API started that ended ZOMBIE_GRACE_S ago and nobody collected (an
        app nobody waited for, a session whose client vanished): its status stays here for a
        late `wait`, and the process table does not fill with zombies."""
        now = time.time()
        for info in await sys.ps(True):
            # A durable process resumed at boot is nobody's child: its outcome is in the durable record.
            ours = info.pid in self._owned or (info.durable_id is not None and info.ppid == 0)
            if ours and info.ended_at is not None and now - info.ended_at >= ZOMBIE_GRACE_S:
                try:
                    await self.collect(sys, info.pid, timeout=0)
                except SyscallError:  # reaped meanwhile by a waiter of its own
                    self._owned.discard(info.pid)

    async def collect(self, sys: Sys, pid: int, timeout: float | None = None) -> ExitStatus:
        """Wait (as `sys`) for process `pid` to end and reap it, or the status already collected."""
        known = self._statuses.get(pid)
        if known is not None:
            return known
        try:
            status = await sys.wait(pid, timeout)
        except NoSuchProcess:
            known = self._statuses.get(pid)  # another collector reaped it meanwhile
            if known is None:
                raise
            return known
        self._statuses[pid] = status
        while len(self._statuses) > KEPT_STATUSES:
            self._statuses.popitem(last=False)
        self._owned.discard(pid)
        self._console.ended(pid)
        return status


@dataclass
class ProcsState:
    sys: Sys  # llmosd's
    console: DaemonConsole
    ledger: ExitLedger
    owned: set[int] = field(default_factory=set)  # pids this API started (and remote sessions), until collected


def procs_state(request: Request) -> ProcsState:
    return state_of(request.app)


async def reap_forever(app: Any) -> None:
    """llmosd's chore for the life of the daemon: every REAP_INTERVAL_S, `ExitLedger.sweep`."""
    state = state_of(app)
    while True:
        await anyio.sleep(REAP_INTERVAL_S)
        await state.ledger.sweep(state.sys)


def state_of(app: Any) -> ProcsState:
    """The API's state, made on first use (the console is the one the daemon attached to its
    kernel; without one, output streams carry only the exit)."""
    app_state = app.state
    state = getattr(app_state, "procs", None)
    if state is None:
        console = getattr(app_state, "console", None) or DaemonConsole()
        owned: set[int] = set()
        state = app_state.procs = ProcsState(app_state.gateway.sys, console, ExitLedger(console, owned), owned)
    return state


async def process_info(sys: Sys, pid: int) -> ProcessInfo:
    """Process `pid`'s snapshot, live or ended and not yet reaped; NoSuchProcess otherwise."""
    for info in await sys.ps(True):
        if info.pid == pid:
            return info
    raise NoSuchProcess(f"no process with pid {pid} (it never existed, or it ended and was reaped)")


def _info(info: ProcessInfo) -> dict[str, Any]:
    return info.model_dump(mode="json")


# -- spawn and list -------------------------------------------------------------------------------
def resolve(body: SpawnBody) -> tuple[Any, str | None]:
    """The app to spawn (a registered name's reference, or the reference given) and its
    default name. The `spawn` syscall checks the arguments against its signature."""
    registered = plugins.apps().get(body.app)
    name = body.name or (body.app if registered else None)
    return (registered.app if registered else body.app), name


@router.post("", status_code=201)
async def spawn(body: SpawnBody, request: Request) -> dict[str, Any]:
    """Start an app as a child of llmosd; 201 with its ProcessInfo."""
    state = procs_state(request)
    app, name = resolve(body)
    caps = DEFAULT_APP_CAPS if body.caps is None else frozenset(body.caps)
    info = await state.sys.spawn(app, *body.args, kwargs=body.kwargs, name=name, caps=caps, quotas=body.quotas,
                                 priority=body.priority, durable=body.durable, restart=body.restart,
                                 model=body.model)
    state.owned.add(info.pid)
    return _info(info)


@router.get("")
async def list_processes(request: Request, include_ended: bool = Query(False, alias="all")) -> dict[str, Any]:
    """The live processes; `?all=true` adds the ended ones not yet reaped."""
    infos = await procs_state(request).sys.ps(include_ended)
    return {"object": "list", "data": [_info(info) for info in infos]}


@router.get("/{pid}")
async def get_process(pid: int, request: Request) -> dict[str, Any]:
    return _info(await process_info(procs_state(request).sys, pid))


@router.get("/{pid}/trace")
async def trace(pid: int, request: Request, limit: int = Query(1000, ge=1)) -> dict[str, Any]:
    """The process's most recent syscalls, oldest first (also after it ended)."""
    events = await procs_state(request).sys.trace(pid, limit=limit)
    return {"object": "list", "data": [event._asdict() for event in events]}


# -- wait and output ---------------------------------------------------------------------------
@router.post("/{pid}/wait")
async def wait(pid: int, request: Request, timeout: float | None = Query(None, ge=0)) -> dict[str, Any]:
    """Wait (at most `timeout` s: then 504) for the process to end, reap it, and return its
    ExitStatus. Its `result` is JSON; a result JSON cannot carry is given as its repr."""
    state = procs_state(request)
    return wire.exit_status(await state.ledger.collect(state.sys, pid, timeout))


@router.get("/{pid}/logs")
async def logs(pid: int, request: Request) -> dict[str, Any]:
    """What the process wrote so far (the last 1 MB), at once: `llmos logs PID` without -f."""
    state = procs_state(request)
    if state.ledger.get(pid) is None and not state.console.knows(pid):
        await process_info(state.sys, pid)  # 404 for a process nobody knows
    return {"pid": pid, "text": state.console.written(pid)}


@router.get("/{pid}/output")
async def output(pid: int, request: Request) -> StreamingResponse:
    """Server-sent events: {"text": ...} as the process writes (what it wrote before first),
    {"question": ..., "id": n} when it asks (answer with POST .../answer), and at its end
    {"exit": ExitStatus}. Following a process this API started to its end reaps it (llmosd
    is its parent); any other is left for its own parent to reap, and its exit carries no
    result. A comment line now and then keeps an idle stream open."""
    state = procs_state(request)
    watch = _Watch(status=state.ledger.get(pid))
    if watch.status is not None or not await _alive(state, pid):
        state.console.ended(pid)  # ended (and reaped): what it wrote is replayed, then the stream ends
    else:
        await _watch(state, pid, watch)
    return StreamingResponse(_output_events(state, pid, watch), media_type=wire.SSE_MEDIA_TYPE,
                             headers=wire.SSE_HEADERS)


async def _alive(state: ProcsState, pid: int) -> bool:
    """Whether `pid` is in the process table; a process reaped by its own parent whose output
    the console still holds is not (404 for a process nobody knows)."""
    try:
        await process_info(state.sys, pid)
        return True
    except NoSuchProcess:
        if state.console.knows(pid):
            return False
        raise


@dataclass
class _Watch:
    status: ExitStatus | None = None  # how the followed process ended, once known
    pid: int | None = None  # the process that watches for its end, while there is one


async def _watch(state: ProcsState, pid: int, watch: _Watch) -> None:
    """Start a child of llmosd that learns how `pid` ends and then ends its output stream
    (the stream itself only reads the console)."""
    async def main(sys: Sys) -> None:
        watch.status = await _ending(state, sys, pid)
        state.console.ended(pid)

    watch.pid = (await state.sys.spawn(main, name="llmosd.output", caps=WATCHER_CAPS)).pid


async def _ending(state: ProcsState, sys: Sys, pid: int) -> ExitStatus | None:
    """How `pid` ends (None: reaped by another waiter before anyone here saw it end). A
    process this API started is waited for and reaped; any other is watched through `ps`,
    since reaping it would take its exit status from its parent."""
    if pid in state.owned:
        try:
            return await state.ledger.collect(sys, pid)
        except NoSuchProcess:
            return state.ledger.get(pid)
    while True:
        info = next((info for info in await sys.ps(True) if info.pid == pid), None)
        if info is None:
            return None
        if info.state.terminal:
            return ExitStatus(pid=pid, name=info.name, state=info.state, reason=info.reason)
        await anyio.sleep(FOREIGN_POLL_S)


async def _output_events(state: ProcsState, pid: int, watch: _Watch) -> AsyncIterator[bytes]:
    try:
        async for event in state.console.follow(pid):
            yield wire.sse(event)
        if watch.status is not None:
            yield wire.sse({"exit": wire.exit_status(watch.status)})
        else:
            gone = NoSuchProcess(f"process {pid} ended and was reaped by another waiter; its exit status is not known")
            yield wire.sse(errors.from_syscall(gone).body())
    finally:
        if watch.pid is not None:
            await _reap(state.sys, watch.pid)


async def _reap(sys: Sys, pid: int) -> None:
    with anyio.move_on_after(REAP_TIMEOUT_S, shield=True):
        try:
            await sys.kill(pid, "its output follower left")  # a no-op once it ended
            await sys.wait(pid)
        except SyscallError:
            pass


@router.post("/{pid}/answer")
async def answer(pid: int, body: AnswerBody, request: Request) -> dict[str, Any]:
    """Answer the process's open question (as the user at its terminal would)."""
    question = procs_state(request).console.answer(pid, body.text, body.id)
    return {"pid": pid, "id": question}


# -- control -----------------------------------------------------------------------------------
@router.post("/{pid}/kill")
async def kill(pid: int, request: Request, body: KillBody | None = None) -> dict[str, Any]:
    """End the process now. Its snapshot may still show it running: it ends at its next
    checkpoint; `wait` says how it ended."""
    state = procs_state(request)  # the daemon's own process is protected by the kernel (EPERM)
    reason = body.reason if body is not None and body.reason else "killed over HTTP"
    await state.sys.kill(pid, reason)
    return _info(await process_info(state.sys, pid))


@router.post("/{pid}/suspend")
async def suspend(pid: int, request: Request) -> dict[str, Any]:
    state = procs_state(request)
    await state.sys.suspend(pid)
    return _info(await process_info(state.sys, pid))


@router.post("/{pid}/resume")
async def resume(pid: int, request: Request) -> dict[str, Any]:
    state = procs_state(request)
    await state.sys.resume(pid)
    return _info(await process_info(state.sys, pid))


@router.post("/{pid}/nice")
async def nice(pid: int, body: NiceBody, request: Request) -> dict[str, Any]:
    state = procs_state(request)
    await state.sys.nice(body.priority, pid)
    return _info(await process_info(state.sys, pid))
