"""Syscall dispatch: one table from request type to handler, and one short path through it.

The path, for every call: resolve the request to a known type (EINVAL/ENOSYS if not),
check every capability it needs (EPERM), charge the syscall quota (EDQUOT), honour a
suspension, run the handler, then account its time and append one trace event (and tell
the trace listeners and the audit log, if any). This is the only place that checks capabilities: handlers
trust the request they are given. It also applies the injection rule of kernel/security.py:
a call that could send data out, from a process that has read untrusted text, needs the
user's approval; and it notes the untrusted text a call brings in.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.lowlevel
from pydantic import ValidationError

from llmos.kernel import params, security
from llmos.kernel.abi import Request
from llmos.kernel.capabilities import PROC_ADMIN, Control, Need, grants
from llmos.kernel.errors import (
    InvalidRequest, KernelFault, NoSuchProcess, PermissionDenied, QuotaExceeded, SyscallError, UnknownSyscall)
from llmos.kernel.process import Process
from llmos.kernel.security import Effects
from llmos.kernel.stats import TraceEvent

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

Handler = Callable[["Kernel", Process, Any], Awaitable[Any]]
# Told of every traced call: its event, the process, the request (None if it never resolved to
# one, or for work done on a process's behalf) and what the call returned, or the SyscallError
# it raised. Observers (OpenTelemetry export, llmos.server.telemetry) hang here, so the kernel
# imports none of them. A listener runs inside the dispatch path: it must be quick, and what it
# raises is logged and dropped, never the caller's.
TraceListener = Callable[[TraceEvent, Process, Request | None, Any], None]
T = TypeVar("T")
log = logging.getLogger(__name__)


CALL_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?")  # "spawn", "context.append"


class SyscallTable:
    def __init__(self, handlers: Mapping[type[Request], Handler]) -> None:
        self.handlers = dict(handlers)
        self.by_name = {cls.call: cls for cls in self.handlers}
        if len(self.by_name) != len(self.handlers):
            raise ValueError("two request types share a call name")
        bad = [name for name in self.by_name if not CALL_NAME.fullmatch(name)]
        families = {name.partition(".")[0] for name in self.by_name if "." in name}
        bad += sorted(families & set(self.by_name))  # `sys.context` cannot be a call and a family
        if bad:
            raise ValueError(f"bad call names {bad}: a call is 'name' or 'family.name', lowercase, and no "
                             "family shares a call's name")

    def resolve(self, request: Any) -> Request:
        """A request object as is; a dict {"call": name, **args} validated into its type."""
        if type(request) in self.handlers:
            return request
        if isinstance(request, Request):
            raise UnknownSyscall(f"no handler for syscall {request.call or type(request).__name__!r}")
        if not isinstance(request, Mapping):
            raise InvalidRequest(f"a syscall is a request object or a dict with a 'call' key, not {type(request).__name__}")
        args = dict(request)
        name = args.pop("call", None)
        cls = self.by_name.get(name) if isinstance(name, str) else None
        if cls is None:
            raise UnknownSyscall(f"unknown syscall {name!r}; known: {sorted(self.by_name)}")
        try:
            return cls.model_validate(args)
        except ValidationError as exc:
            raise InvalidRequest(f"bad arguments to {name!r}: {_summarize(exc)}") from None


def _typed_within(exc: BaseException) -> SyscallError | None:
    """The first SyscallError inside an exception group, if every leaf of it is one."""
    if not isinstance(exc, BaseExceptionGroup):
        return None
    leaves = list(_leaves(exc))
    return leaves[0] if leaves and all(isinstance(leaf, SyscallError) for leaf in leaves) else None  # type: ignore[return-value]


def _leaves(group: BaseExceptionGroup) -> Any:
    for exc in group.exceptions:
        yield from _leaves(exc) if isinstance(exc, BaseExceptionGroup) else (exc,)


def _call_name(request: Any) -> str:
    name = request.get("call") if isinstance(request, Mapping) else getattr(request, "call", None)
    return name if isinstance(name, str) and name else "?"


def _summarize(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors())


class Dispatcher:
    def __init__(self, kernel: Kernel, table: SyscallTable) -> None:
        self.kernel = kernel
        self.table = table
        self.trace: deque[TraceEvent] = deque(maxlen=params.TRACE_SIZE)
        self.listeners: list[TraceListener] = []
        self.calls = 0  # syscalls dispatched so far, by every process
        self._last_yield = time.perf_counter()

    async def dispatch(self, proc: Process, request: Any) -> Any:
        began, wall = time.perf_counter(), time.time()
        call, outcome = _call_name(request), "ok"
        req: Request | None = None
        answer: Any = None
        effects = security.NONE
        self.calls += 1
        try:
            req = self.table.resolve(request)
            call = req.call
            if proc.state.terminal:  # a handle that outlived its process (kept by a server, say) is dead
                raise NoSuchProcess(f"process {proc.pid} ({proc.name}) has ended; it can make no more syscalls")
            effects = req.effects(self.kernel, proc)
            if proc.journal is not None:  # durable: checked and run live, or answered from its record
                if not proc.runnable.is_set():
                    await proc.runnable.wait()
                answer = await proc.journal.record(proc, req, functools.partial(self._admit_and_run, proc, effects))
            else:
                self._admit(proc, req)
                if not proc.runnable.is_set():
                    await proc.runnable.wait()
                answer = await self._run(proc, req, effects)
            self._note_ingress(proc, req, answer)  # live or replayed, that text is in the process now
            return answer
        except SyscallError as exc:
            outcome, answer = exc.code.name, exc
            self._note_ingress(proc, req, exc)  # an error's message may carry what a tool said
            await self._maybe_yield()  # a loop of failing calls must not starve others, nor dodge a kill
            raise
        except Exception as exc:  # a handler's or a driver's bug: the caller gets a typed error all the same
            typed = _typed_within(exc)  # a handler's task group wraps its children's typed errors
            if typed is None:
                log.exception("syscall %s of process %d failed on an untyped error", call, proc.pid)
                typed = KernelFault(f"{call} failed inside the kernel: {type(exc).__name__}: {exc}")
            outcome, answer = typed.code.name, typed
            raise typed from exc
        finally:
            elapsed = time.perf_counter() - began
            proc.stats.syscall_time_s += elapsed
            event = TraceEvent(wall, proc.pid, call, elapsed, outcome)
            self._traced(event, proc, req, answer)
            if self.kernel.audit is not None:  # with the effects worked out once, above
                self.kernel.audit.record(event, proc, req, answer, effects)

    def _traced(self, event: TraceEvent, proc: Process, req: Request | None, answer: Any) -> None:
        self.trace.append(event)
        for listener in self.listeners:
            try:
                listener(event, proc, req, answer)
            except Exception:
                log.exception("trace listener %r failed", listener)

    def _admit(self, proc: Process, req: Request) -> None:
        try:
            if req.capability is not None:
                self.require(proc, req.capability, req.call)
            for need in req.needs(proc):
                self.require(proc, need, req.call)
        except PermissionDenied:
            raise  # refused before it began: not charged
        except SyscallError:
            proc.stats.syscalls += 1  # made, and failed on its target (ESRCH): charged like any call
            raise
        proc.stats.syscalls += 1
        limit = proc.quotas.max_syscalls
        if limit is not None and proc.stats.syscalls > limit:
            if proc.stats.syscalls > limit + params.QUOTA_GRACE_SYSCALLS:
                self.kernel.kill(proc.pid, f"syscall quota of {limit} exceeded and calls went on")
            raise QuotaExceeded(f"process {proc.pid} has used its quota of {limit} syscalls")

    # -- capabilities ------------------------------------------------------------------------
    def require(self, proc: Process, need: Need, call: str) -> None:
        """Raise PermissionDenied unless `proc` holds `need` (ESRCH first for a missing target)."""
        if isinstance(need, Control):
            if not self._controls(proc, need):
                raise PermissionDenied(f"{call!r}: process {proc.pid} ({proc.name}) may not act on process "
                                       f"{need.pid}: it is neither itself nor a descendant, and "
                                       f"{PROC_ADMIN!r} is not held")
        elif not grants(proc.capabilities, need):
            raise PermissionDenied(f"{call!r} needs capability {need!r}, which process {proc.pid} ({proc.name}) "
                                   "does not hold")

    def permits(self, proc: Process, need: Need) -> bool:
        """Whether `proc` holds `need`: for calls that show only what the caller may use."""
        try:
            self.require(proc, need, "?")
        except PermissionDenied:
            return False
        return True

    def _controls(self, proc: Process, need: Control) -> bool:
        if grants(proc.capabilities, PROC_ADMIN):
            return True
        if not (need.gone_ok and not self.kernel.procs.exists(need.pid)):
            self.kernel.procs.get(need.pid)  # ESRCH before EPERM: say first that it does not exist
        return self.kernel.procs.is_descendant(need.pid, proc.pid)

    async def on_behalf(self, proc: Process, call: str, need: Need, work: Callable[[], Awaitable[T]]) -> T:
        """Work the kernel does for `proc` inside one of its syscalls (the pager's summary
        generation): checked against `need` and traced as `call`. Its time is already part
        of the enclosing syscall's, so it is not added again."""
        began, wall, outcome, answer = time.perf_counter(), time.time(), "ok", None
        try:
            self.require(proc, need, call)
            answer = await work()
            return answer
        except SyscallError as exc:
            outcome, answer = exc.code.name, exc
            raise
        finally:
            self._traced(TraceEvent(wall, proc.pid, call, time.perf_counter() - began, outcome), proc, None, answer)

    async def _admit_and_run(self, proc: Process, effects: Effects, req: Request) -> Any:
        """A durable process's live call. Its rights are checked only when it runs live: a
        replayed call was checked when it was recorded (a refusal is recorded too), and the
        pids it names may belong to a kernel that has since died."""
        self._admit(proc, req)
        return await self._run(proc, req, effects)

    def _note_ingress(self, proc: Process, req: Request | None, answer: Any) -> None:
        try:
            ingress = req.ingress(self.kernel, proc, answer) if req is not None else None
        except Exception:  # a request's bug must not replace the call's answer; assume the worst
            log.exception("%s: could not tell where its answer came from", req.call if req else "?")
            ingress = f"the answer of {req.call if req else 'a call'} (its source could not be told)"
        if ingress is not None:
            security.mark_untrusted(proc, ingress)

    async def _run(self, proc: Process, req: Request, effects: Effects = security.NONE) -> Any:
        if effects.egress is not None:  # the injection rule: asks the user, or refuses (kernel/security.py)
            await security.check_egress(self.kernel, proc, req, effects.egress)
        handler = self.table.handlers[type(req)]
        if not req.blocking:
            result = await handler(self.kernel, proc, req)
            await self._maybe_yield()
            return result
        self.kernel.begin_wait(proc)
        try:
            return await handler(self.kernel, proc, req)
        finally:
            self.kernel.end_wait(proc)

    async def _maybe_yield(self) -> None:
        # Cheap calls yield only now and then, so a loop of them costs microseconds
        # each yet cannot starve the other processes.
        now = time.perf_counter()
        if now - self._last_yield >= params.YIELD_INTERVAL_S:
            self._last_yield = now
            await anyio.lowlevel.checkpoint()
        else:
            await anyio.lowlevel.checkpoint_if_cancelled()
