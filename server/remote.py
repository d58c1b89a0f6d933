"""Remote syscalls: an app running in another OS process, or on another machine, uses this
kernel over HTTP with the same code and the same typed errors as a local app
(`llmos run --remote URL app.py:main`; the client side is llmos.server.client).

`POST /v1/remote` opens a *session*: a kernel process, a child of llmosd, that stands for
the remote app. `POST /v1/remote/{pid}/syscalls` hands it one syscall in dict form
({"call": "chat", ...fields}) and the process issues it (`sys.syscall(body)`), so the
dispatcher validates it with the request class, checks capabilities, charges quotas and
traces it exactly as for a local app; `ps` shows the session and `kill` ends it. Calls
may overlap (an app that gathers several chats), as a local process's tasks may.
The answer is the result as JSON (llmos.server.wire), or the error in the shared error
JSON, which the client re-raises as the same SyscallError class; a streamed chat or
generate answers with server-sent events: {"text": piece}..., then {"reply": Reply}.
`POST /v1/remote/{pid}/exit` ends it: EXITED with the app's result, or FAILED with its
error (the reason reads as it would locally: "ZeroDivisionError: division by zero").

Guards, on top of the API key: a random token per session, required on every call (header
X-LLMOS-Session); and a lease: a client silent for `lease_s` (no call, no heartbeat
`POST .../heartbeat`) is taken for gone, and llmosd kills the session process.
"""

from __future__ import annotations

import functools
import hmac
import math
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llmos.server import errors, wire
from llmos.server.gateway import Failure, RequestEnded
from llmos.server.hangup import cancel_on_hang_up
from llmos.server.procs_api import process_info, procs_state
from llmos.syscalls import (
    DEFAULT_APP_CAPS, NoSuchProcess, PermissionDenied, ProcessInfo, Quotas, Sys, SyscallError, TextStream)

router = APIRouter(prefix="/v1/remote")
LEASE_S = 60.0  # how long a session's client may stay silent (no call, no heartbeat) by default
MAX_LEASE_S = 3600.0
KEPT_SESSIONS = 1024  # ended sessions whose record stays for a late /exit, latest first
_STREAM = object()  # a call's first reply item when its result is a TextStream: pieces follow
_ENDED = object()  # what a call got when the session ended before answering it


# -- bodies ------------------------------------------------------------------------------------
class OpenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="remote", min_length=1, max_length=128)  # the session process's name
    caps: list[str] | None = None  # narrowed by llmosd's; default DEFAULT_APP_CAPS
    quotas: Quotas | None = None
    priority: int | None = None
    lease_s: float = Field(default=LEASE_S, gt=0, le=MAX_LEASE_S)


class RemoteError(BaseModel):
    """How the remote app failed: its exception's class name, message and traceback."""

    type: str = Field(default="Exception", max_length=200)
    message: str = ""
    traceback: str | None = None


class ExitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    result: Any = None  # what the app's main returned, as JSON
    error: RemoteError | None = None  # or how it failed


# -- how a remote failure reads in `ps` --------------------------------------------------------------
class RemoteAppError(Exception):
    """The remote app raised. Each remote exception class gets a subclass of this one of the
    same name, so the session's FAILED reason reads as a local process's would."""


class RemoteTraceback(Exception):
    """The traceback the remote app reported: the cause of its RemoteAppError, so the
    process's traceback shows both (as concurrent.futures does for a worker's)."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


@functools.lru_cache(maxsize=256)
def _failure_class(name: str) -> type[RemoteAppError]:
    return type(name, (RemoteAppError,), {"__module__": "remote"})


def remote_failure(error: RemoteError) -> RemoteAppError:
    exc = _failure_class(error.type if error.type.isidentifier() else "RemoteAppError")(error.message)
    if error.traceback:
        exc.__cause__ = RemoteTraceback(error.traceback)
    return exc


# -- sessions ----------------------------------------------------------------------------------
@dataclass
class _Call:
    """One syscall handed to a session: its answer goes from `reply` (the session's end) to
    `replies` (the HTTP request's end): the result, or _STREAM then pieces then the Reply,
    or a Failure. Cancelling `scope` cancels the syscall (its client hung up)."""

    body: dict[str, Any]
    reply: MemoryObjectSendStream[Any]
    replies: MemoryObjectReceiveStream[Any]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class Session:
    """One remote app's process: serves the syscalls handed to it until the client exits,
    goes silent past its lease, or the process is killed."""

    def __init__(self, daemon: Sys, lease_s: float) -> None:
        self.token = secrets.token_urlsafe(32)
        self.lease_s = lease_s
        self.pid = 0  # known once spawned
        self._daemon = daemon  # llmosd's handle: the daemon, not the session, enforces the lease
        self._last_seen = anyio.current_time()
        self._calls, self._inbox = anyio.create_memory_object_stream[_Call](math.inf)
        self._exit: ExitBody | None = None
        self.ended = False

    def touch(self) -> None:
        """The client was heard from: the lease starts again."""
        self._last_seen = anyio.current_time()

    def submit(self, body: dict[str, Any]) -> _Call:
        """Hand a syscall to the session process; its answer comes on the call's `replies`."""
        call = _Call(body, *anyio.create_memory_object_stream[Any](math.inf))
        try:
            self._calls.send_nowait(call)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            call.reply.close()
            call.replies.close()
            raise NoSuchProcess(f"the remote session {self.pid} has ended") from None
        return call

    def finish(self, body: ExitBody) -> None:
        """The client is done: the process ends as `body` says (calls still in flight are cancelled)."""
        if self._exit is None:
            self._exit = body
        self._calls.close()

    async def main(self, sys: Sys) -> Any:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_lease)
                async with self._inbox:
                    async for call in self._inbox:
                        tg.start_soon(self._serve, sys, call)
                tg.cancel_scope.cancel()
        finally:
            self.ended = True
        assert self._exit is not None  # the inbox closes only by finish()
        if self._exit.error is not None:
            raise remote_failure(self._exit.error)
        return self._exit.result

    async def _keep_lease(self) -> None:
        while (left := self._last_seen + self.lease_s - anyio.current_time()) > 0:
            await anyio.sleep(left)
        await self._daemon.kill(self.pid, f"remote session lease expired: its client was silent for {self.lease_s:g} s")

    async def _serve(self, sys: Sys, call: _Call) -> None:
        async with call.reply:
            with call.scope:
                try:
                    result = await sys.syscall(call.body)
                except Exception as exc:  # a SyscallError for the app to handle, or a bug: a 500
                    await _send(call.reply, Failure(exc))
                    return
                if isinstance(result, TextStream):
                    await self._stream(result, call.reply)
                else:
                    await _send(call.reply, result)

    @staticmethod
    async def _stream(stream: TextStream, reply: MemoryObjectSendStream[Any]) -> None:
        try:
            await reply.send(_STREAM)
            async for piece in stream:
                await reply.send(piece)
            await reply.send(stream.reply)
        except anyio.BrokenResourceError:
            pass  # the client left: the generation is cancelled below
        except Exception as exc:  # noqa: BLE001 - the error ends the event stream
            await _send(reply, Failure(exc))
        finally:
            await stream.aclose()


async def _send(reply: MemoryObjectSendStream[Any], item: Any) -> None:
    try:
        await reply.send(item)
    except anyio.BrokenResourceError:
        pass  # the HTTP request that asked is gone


class Sessions:
    """The daemon's remote sessions, by pid (ended ones kept a while for a late /exit)."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[int, Session] = OrderedDict()

    async def open(self, daemon: Sys, body: OpenBody) -> tuple[Session, ProcessInfo]:
        session = Session(daemon, body.lease_s)
        caps = DEFAULT_APP_CAPS if body.caps is None else frozenset(body.caps)
        info = await daemon.spawn(session.main, name=body.name, caps=caps, quotas=body.quotas,
                                  priority=body.priority)
        session.pid = info.pid
        self._sessions[info.pid] = session
        ended = [pid for pid, s in self._sessions.items() if s.ended]
        for pid in ended[: max(0, len(ended) - KEPT_SESSIONS)]:
            del self._sessions[pid]
        return session, info

    def find(self, pid: int, token: str | None) -> Session:
        session = self._sessions.get(pid)
        if session is None:
            raise NoSuchProcess(f"no remote session with pid {pid}")
        if token is None or not hmac.compare_digest(token.encode(), session.token.encode()):
            raise PermissionDenied(f"the session token (header {wire.SESSION_HEADER}) of remote session {pid} "
                                   "is missing or wrong")
        return session

    def forget(self, pid: int) -> None:
        self._sessions.pop(pid, None)


def _sessions(request: Request) -> Sessions:
    state = request.app.state
    sessions = getattr(state, "remote_sessions", None)
    if sessions is None:
        sessions = state.remote_sessions = Sessions()
    return sessions


def _session(request: Request, pid: int) -> Session:
    return _sessions(request).find(pid, request.headers.get(wire.SESSION_HEADER))


async def _gone(request: Request, session: Session) -> RequestEnded:
    """The error for a call the session process did not answer: it was killed or ended."""
    try:
        info = await process_info(procs_state(request).sys, session.pid)
        how = f"{info.state.name.lower()}: {info.reason}"
    except NoSuchProcess:
        how = "ended"
    return RequestEnded(f"remote session {session.pid} was {how}")


# -- routes ------------------------------------------------------------------------------------
@router.post("", status_code=201)
async def open_session(body: OpenBody, request: Request) -> dict[str, Any]:
    """Make the process that stands for a remote app: 201 with its pid, the session token
    for every later call, its lease, and its ProcessInfo."""
    state = procs_state(request)
    session, info = await _sessions(request).open(state.sys, body)
    state.owned.add(session.pid)
    return {"pid": session.pid, "token": session.token, "lease_s": session.lease_s,
            "process": info.model_dump(mode="json")}


@router.post("/{pid}/syscalls")
async def remote_syscall(pid: int, request: Request, body: dict[str, Any] = Body(...)) -> Any:
    """Issue the syscall `body` ({"call": name, **fields}) as the session's process."""
    session = _session(request, pid)
    session.touch()
    wire.check_body(body)
    call = session.submit(body)
    try:
        first = await _first_reply(request, call)
    except BaseException:
        call.replies.close()
        raise
    if first is _ENDED:
        call.replies.close()
        raise await _gone(request, session)
    if first is _STREAM:
        return StreamingResponse(_events(request, session, wire.call_name(body), call.replies),
                                 media_type=wire.SSE_MEDIA_TYPE, headers=wire.SSE_HEADERS)
    call.replies.close()
    if isinstance(first, Failure):
        raise first.error
    return JSONResponse(wire.encode_result(wire.call_name(body), first))


async def _first_reply(request: Request, call: _Call) -> Any:
    """The call's first reply item, or _ENDED when the session ended without one. A client
    that hangs up before it cancels the syscall, as cancelling a local one does (so a
    `recv` it gave up on consumes no message)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_on_hang_up, request, call.scope)
        try:
            return await call.replies.receive()
        except anyio.EndOfStream:
            return _ENDED
        finally:
            tg.cancel_scope.cancel()


async def _events(request: Request, session: Session, call: str,
                  replies: MemoryObjectReceiveStream[Any]) -> AsyncIterator[bytes]:
    async with replies:
        async for item in replies:
            if isinstance(item, str):
                yield wire.sse({"text": item})
            elif isinstance(item, Failure):
                yield wire.sse(_error_body(item.error))
                return
            else:
                session.touch()
                yield wire.sse({"reply": wire.encode_result(call, item)})
                return
    yield wire.sse(_error_body(await _gone(request, session)))


def _error_body(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, errors.APIError):
        return exc.body()
    if isinstance(exc, SyscallError):
        return errors.from_syscall(exc).body()
    return errors.APIError(500, f"{type(exc).__name__}: {exc}").body()


@router.post("/{pid}/heartbeat")
async def heartbeat(pid: int, request: Request) -> dict[str, Any]:
    """The client is alive (while it waits on something long): the lease starts again."""
    session = _session(request, pid)
    if session.ended:
        raise await _gone(request, session)
    session.touch()
    return {"pid": pid, "lease_s": session.lease_s}


@router.post("/{pid}/exit")
async def exit_session(pid: int, body: ExitBody, request: Request) -> dict[str, Any]:
    """End the session with the app's result or error; returns its ExitStatus (reaped). A
    session that had already ended (killed, its lease expired) answers how it ended."""
    session = _session(request, pid)
    session.finish(body)
    state = procs_state(request)
    status = await state.ledger.collect(state.sys, pid)
    _sessions(request).forget(pid)
    return wire.exit_status(status)
