"""The record of a durable process: each of its syscalls, with its result, kept before the
result reaches the process, and answered from the record when the process is replayed.

The dispatcher hands every syscall of a durable process (one with a `journal`) to
`Journal.record`. The record is kept by a `StepEngine` (llmos.durable: a DBOS step per
syscall, named after the call). On replay a recorded step is not run again: its answer, or
its error, comes from the record, so no generation is recomputed and no tool runs twice.
What the record holds besides the answer:

- a digest of the request, so a replay that asks something else (the app's code changed)
  stops with ReplayDiverged naming the syscall, rather than act on another question's answer;
- the process's context window after the call, when the call changed it: a resumed
  process goes on with the conversation it had;
- for a wait (`sys.sleep`), the wall clock time it ends at, in a step of its own before the
  call's: a process resumed in the middle of it waits only for the rest, as DBOS's durable
  sleep does;
- for a streamed generation, its pieces: they reach the process as they come, and the
  stream ends for the process only once the reply is recorded. A replayed stream gives the
  recorded pieces back (not generated again). Console output the process writes while a
  stream is open belongs to the stream: shown live, not recorded on its own, not shown
  again on replay; any other call waits until the stream is recorded, so that a stream
  generated again after a crash is never followed by answers recorded after the old one.

Each live syscall gets an idempotency key, stable across replays (`step_key`): a tool or
a memory write that ran but was not recorded before a crash runs again on resume with the
same key, so the write it makes overwrites instead of duplicating.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import pydantic_core
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict

from llmos.kernel.abi import Request
from llmos.kernel.errors import DurableCancelled, NoSuchProcess, ReplayDiverged, SyscallError
from llmos.kernel.memory import ContextSnapshot
from llmos.kernel.process import ProcessInfo

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.process import Process

log = logging.getLogger(__name__)
WAIT_END_STEP = ".ends_at"  # suffix of the step that records when a wait ends (a syscall's helper, not a syscall)
_STEP_KEY: ContextVar[str | None] = ContextVar("llmos_step_key", default=None)


def idempotency_key() -> str:
    """The key of the syscall being made: stable across replays for a durable process,
    fresh for any other. Tools get it in their ToolContext; `remember` derives its id from it."""
    return _STEP_KEY.get() or uuid.uuid4().hex


def current_step_key() -> str | None:
    """The key of the durable syscall being made, if one is (else None)."""
    return _STEP_KEY.get()


def forget_step_key() -> None:
    """A process's task starts with no key: a child spawned inside its parent's syscall
    must not inherit the parent's (tasks copy their creator's context variables)."""
    _STEP_KEY.set(None)


def key_id(key: str) -> str:
    """A 32-hex id made from an idempotency key (an item id in a store)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class StepEngine(Protocol):
    """Keeps one durable process's record (llmos.durable implements it on DBOS)."""

    async def step(self, name: str, body: Callable[[str], Awaitable[Any]]) -> Any:
        """The recorded answer of the next step if there is one (its name must be `name`,
        else ReplayDiverged); otherwise `body(key)`'s, recorded first. `key` is the step's
        idempotency key."""


class ErrorRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str
    message: str

    @classmethod
    def of(cls, exc: SyscallError) -> ErrorRecord:
        return cls(type=type(exc).__name__, message=exc.message)

    def exception(self) -> SyscallError:
        cls = _syscall_errors().get(self.type, SyscallError)
        exc = cls.__new__(cls)
        SyscallError.__init__(exc, self.message)
        return exc


def _syscall_errors() -> dict[str, type[SyscallError]]:
    found: dict[str, type[SyscallError]] = {}
    pending: list[type[SyscallError]] = [SyscallError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


class Recorded(BaseModel):
    """One syscall of a durable process, as its record keeps it."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    call: str
    digest: str  # of the request: a replay must ask the same
    summary: str  # the request, shortened, for the error a diverging replay gets
    result: Any = None
    error: ErrorRecord | None = None
    window: ContextSnapshot | None = None  # the context window after the call, if the call changed it
    streamed: bool = False  # the result was a stream: `pieces` is what it gave, piece by piece
    pieces: tuple[str, ...] = ()

    def answer(self) -> Any:
        if self.error is not None:
            raise self.error.exception()
        return self.result


class Journal:
    """The record of one run of a durable process. `helpers` is a task group that lives as
    long as the process (a streamed generation is recorded in one of its tasks)."""

    def __init__(self, durable_id: str, engine: StepEngine, kernel: Kernel, helpers: TaskGroup) -> None:
        self.durable_id = durable_id
        self.engine = engine
        self.kernel = kernel
        self.helpers = helpers
        self.steps = 0  # syscalls recorded or replayed so far in this run
        self.replayed = 0  # of which answered from the record
        self.diverged: str | None = None
        self.old_pids: dict[int, int | None] = {}  # pid in a replayed answer -> its pid now (None: gone)
        self.live_pids: set[int] = set()  # pids this run got live: this kernel's, never translated
        self._open_stream: _StreamRelay | None = None  # a streamed generation not yet recorded
        self._window: dict[str, Any] | None = None  # the last recorded window, as compared
        self._pending_window: ContextSnapshot | None = None  # replayed, not yet put back in the window

    async def record(self, proc: Process, req: Request, run: Callable[[Request], Awaitable[Any]]) -> Any:
        if self.diverged is not None:
            raise ReplayDiverged(self.diverged)
        stream = self._open_stream
        if stream is not None:  # a streamed generation is not recorded yet
            if not req.replay_matches_arguments:  # console output while it streams: part of the stream
                return None if not stream.ran else await run(req)
            await stream.done.wait()  # any other call comes after it in the record, and on replay
        try:
            if req.waits_for() is not None:
                run = await self._until_recorded_end(req, run)
            return await self._record(proc, req, run)
        except DurableCancelled:
            self.kernel.kill(proc.pid, "cancelled")
            raise

    async def _until_recorded_end(self, req: Request,
                                  run: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Any]]:
        """`run` for a wait that ends when its record says: the first run records the wall
        clock time it ends at (a step of its own before the call's), and a replay after a
        crash in the middle of it waits only for what is left of it."""
        seconds = req.waits_for()
        assert seconds is not None

        async def end(key: str) -> float:
            return time.time() + seconds

        ends_at = await self._diverging(req.call + WAIT_END_STEP, end)
        return lambda live: run(live.waiting(ends_at - time.time()))

    async def _record(self, proc: Process, req: Request, run: Callable[[Request], Awaitable[Any]]) -> Any:
        digest, summary = describe(req)
        if req.streams():
            return await self._record_streaming(proc, req, run, digest, summary)
        ran = False

        async def body(key: str) -> Recorded:
            nonlocal ran
            ran = True
            return await self._live(proc, req, run, key, digest, summary)

        rec = await self._step(req, body)
        if not ran:
            self._replayed(rec, req, digest, summary)
            if req.reapply_on_replay():
                await self._reapply(req, run)
            self._learn_pids(proc, rec)
        return rec.answer()

    async def _reapply(self, req: Request, run: Callable[[Request], Awaitable[Any]]) -> None:
        try:
            await run(req)
        except SyscallError as exc:  # its recorded answer stands; the kernel's state is what it can be
            log.info("durable process %s: re-applying %s on replay failed: %s", self.durable_id, req.call, exc)

    # -- pids from before a resume ------------------------------------------------------------------
    def _learn_pids(self, proc: Process, rec: Recorded) -> None:
        """Pids in a replayed answer belong to the kernel that recorded it. The process's own
        maps to its pid now; any other process it started then is gone (an ordinary child
        dies with its kernel; a durable one is waited for by its durable id)."""
        result = rec.result
        if rec.call == "getpid" and isinstance(result, int):
            self.old_pids[result] = proc.pid
        elif isinstance(result, ProcessInfo) and result.pid:
            self.old_pids.setdefault(result.pid, None)

    def translate(self, req: Request, proc: Process) -> Request:
        """A live call naming a pid from before the resume: the same process's pid now, or
        NoSuchProcess rather than whichever process has that number in this kernel. (Its own
        pid now, and those it got live, are this kernel's.)"""
        for name in ("pid", "target"):
            pid = getattr(req, name, None)
            if isinstance(pid, int) and not isinstance(pid, bool) and pid in self.old_pids \
                    and pid not in self.live_pids and pid != proc.pid:
                now = self.old_pids[pid]
                if now is None:
                    raise NoSuchProcess(f"process {pid} was started by durable process {self.durable_id} in a "
                                        "kernel that has since died; ordinary processes do not survive their "
                                        "kernel (spawn it with durable=True and wait by its durable id)")
                return req.model_copy(update={name: now})
        return req

    async def _step(self, req: Request, body: Callable[[str], Awaitable[Recorded]]) -> Recorded:
        rec = await self._diverging(req.call, body)
        self.steps += 1
        return rec

    async def _diverging(self, name: str, body: Callable[[str], Awaitable[Any]]) -> Any:
        """The engine's step `name`, a divergence from the record remembered: every later
        call of the run is refused with it too."""
        try:
            return await self.engine.step(name, body)
        except ReplayDiverged as exc:
            self.diverged = exc.message
            raise

    async def _live(self, proc: Process, req: Request, run: Callable[[Request], Awaitable[Any]], key: str,
                    digest: str, summary: str) -> Recorded:
        await self._put_back_window(proc)
        token = _STEP_KEY.set(key)
        try:
            result = await run(self.translate(req, proc))
        except SyscallError as exc:
            return self._with_window(proc, Recorded(call=req.call, digest=digest, summary=summary,
                                                    error=ErrorRecord.of(exc)))
        finally:
            _STEP_KEY.reset(token)
        if isinstance(result, ProcessInfo):
            self.live_pids.add(result.pid)
        return self._with_window(proc, Recorded(call=req.call, digest=digest, summary=summary, result=result))

    def _replayed(self, rec: Recorded, req: Request, digest: str, summary: str) -> None:
        self.replayed += 1
        if rec.call != req.call or rec.digest != digest:
            self.diverged = (f"durable process {self.durable_id} diverged from its record at syscall "
                             f"#{self.steps}: the record has {rec.summary}, the app now asks {summary}")
            raise ReplayDiverged(self.diverged)
        if rec.window is not None:
            self._pending_window = rec.window
            self._window = rec.window.model_dump()

    async def _put_back_window(self, proc: Process) -> None:
        """Before the first live call after a replay: the window as the record left it
        (once, not at every replayed call: a restore counts every entry's tokens)."""
        snapshot, self._pending_window = self._pending_window, None
        if snapshot is not None and self.kernel.memory is not None:
            await self.kernel.memory.window(proc).restore(snapshot)

    def _with_window(self, proc: Process, rec: Recorded) -> Recorded:
        if proc.context is None:
            return rec
        snapshot = proc.context.snapshot()
        dumped = snapshot.model_dump()
        if dumped == self._window:
            return rec
        self._window = dumped
        return rec.model_copy(update={"window": snapshot})

    # -- streamed generations ---------------------------------------------------------------
    async def _record_streaming(self, proc: Process, req: Request, run: Callable[[Request], Awaitable[Any]],
                                digest: str, summary: str) -> Any:
        relay = self._open_stream = _StreamRelay()

        async def body(key: str) -> Recorded:
            relay.ran = True
            rec = await self._live(proc, req, run, key, digest, summary)
            if not isinstance(rec.result, AsyncIterable):
                return rec  # an error, or a reply with tool calls: no stream after all
            relay.live.set()
            pieces = await relay.pump(rec.result)
            reply = getattr(rec.result, "reply", None)
            return self._with_window(proc, rec.model_copy(update={"result": reply, "streamed": True,
                                                                  "pieces": pieces}))

        async def drive() -> None:
            try:
                relay.record = await self._step(req, body)
                if not relay.ran and relay.record.streamed:
                    relay.replay(relay.record.pieces)
            except Exception as exc:
                relay.error = exc
            finally:
                relay.close()

        self.helpers.start_soon(drive)
        try:
            await relay.settled()
            if relay.error is not None:
                raise relay.error
            if relay.live.is_set():
                return JournaledStream(relay, self._close_stream)
            rec = relay.record
            assert rec is not None
            if not relay.ran:
                self._replayed(rec, req, digest, summary)
            if rec.streamed:
                return JournaledStream(relay, self._close_stream)
        except BaseException:
            self._close_stream(relay)
            raise
        self._close_stream(relay)
        return rec.answer()

    def _close_stream(self, relay: _StreamRelay) -> None:
        """The process is done reading the stream (or there was none after all)."""
        if self._open_stream is relay:
            self._open_stream = None


class _StreamRelay:
    """Carries a streamed generation's pieces from the task that records it to the process."""

    def __init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[str](max_buffer_size=float("inf"))
        self.live = anyio.Event()  # set when a live stream has begun
        self.done = anyio.Event()  # set when the step has ended (recorded, or failed)
        self.stop = anyio.Event()  # set when the process leaves the stream early
        self.ran = False
        self.record: Recorded | None = None
        self.error: Exception | None = None

    async def settled(self) -> None:
        """Until a live stream begins or the step has ended."""
        async with anyio.create_task_group() as tg:
            async def on(event: anyio.Event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on, self.live)
            tg.start_soon(on, self.done)

    async def pump(self, stream: Any) -> tuple[str, ...]:
        pieces: list[str] = []
        iterator = stream.__aiter__()
        try:
            async for piece in iterator:
                pieces.append(piece)
                self.send.send_nowait(piece)
                if self.stop.is_set():
                    break
        finally:
            await iterator.aclose()  # leaving early cancels the generation
        return tuple(pieces)

    def replay(self, pieces: tuple[str, ...]) -> None:
        for piece in pieces:
            self.send.send_nowait(piece)

    def close(self) -> None:
        self.send.close()
        self.done.set()


class JournaledStream:
    """A durable process's streamed generation: text pieces as they come (or, replayed, the
    recorded pieces), then `reply` once the stream is exhausted and recorded."""

    def __init__(self, relay: _StreamRelay, on_end: Callable[[_StreamRelay], None]) -> None:
        self._relay = relay
        self._on_end = on_end
        self.reply: Any = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        relay = self._relay
        try:
            async for piece in relay.receive:
                yield piece
            await relay.done.wait()
            if relay.error is not None:
                raise relay.error
            assert relay.record is not None
            self.reply = relay.record.answer()
        finally:
            relay.stop.set()  # the recording task keeps what came so far, and ends the generation
            self._on_end(relay)

    async def text(self) -> str:
        """Drain the stream and return the whole text."""
        return "".join([piece async for piece in self])

    async def aclose(self) -> None:
        self._relay.stop.set()
        self._on_end(self._relay)


def describe(req: Request) -> tuple[str, str]:
    """The request's digest (what a replay must match: its call, and its arguments unless the
    class says its answer does not depend on them) and a short form for messages."""
    fields = _ordered(req.model_dump())
    matched = fields if req.replay_matches_arguments else {}
    data = pydantic_core.to_json({"call": req.call, **matched}, fallback=_reference)
    shown = ", ".join(f"{name}={value!r}" for name, value in fields.items() if value not in (None, (), {}, ""))
    summary = f"{req.call}({shown[:160] + '...' if len(shown) > 160 else shown})"
    return hashlib.sha256(data).hexdigest()[:24], summary


def _ordered(value: Any) -> Any:
    """`value` with every set sorted: a set's order changes from one Python process to the
    next (string hashing is randomized), and a replay runs in another process."""
    if isinstance(value, (set, frozenset)):
        return sorted((_ordered(item) for item in value), key=repr)
    if isinstance(value, dict):
        return {key: _ordered(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_ordered(item) for item in value]
    return value


def _reference(value: Any) -> str:
    """A stable JSON form of what JSON cannot hold (an app given as a function)."""
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if module and name:
        return f"{module}:{name}"
    return type(value).__name__


__all__ = ["ErrorRecord", "Journal", "JournaledStream", "Recorded", "StepEngine", "current_step_key", "describe",
           "forget_step_key", "idempotency_key", "key_id"]
