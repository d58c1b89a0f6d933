"""Process syscalls: spawn, wait, kill, suspend, resume, nice, ps, getpid, sleep, and the
kernel's own figures (stats) and syscall trace.

A process may control itself and its descendants; anyone else needs `proc.admin`, as does
raising a priority above the caller's own. Each request says so in `needs`; the
dispatcher checks it. Handlers check arguments, then call the kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
from pydantic import Field

from llmos.kernel import capabilities, params
from llmos.kernel.abi import Request
from llmos.kernel.capabilities import Control, Need
from llmos.kernel.durable import RestartPolicy
from llmos.kernel.errors import InvalidRequest, PermissionDenied
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import ExitStatus, Process, ProcessInfo, Quotas
from llmos.kernel.security import Effects
from llmos.kernel.stats import KernelStatistics, TraceEvent

Priority = Field(ge=params.NICE_MIN, le=params.NICE_MAX)
OptionalPriority = Field(default=None, ge=params.NICE_MIN, le=params.NICE_MAX)
MAX_STATUS_CHARS = 200  # a status is one line of a table, not a log


def _raising(caller: Process, priority: int | None) -> Iterator[Need]:
    """Asking for a priority above the caller's own (a lower nice value) needs proc.admin."""
    if priority is not None and priority < caller.priority:
        yield capabilities.PROC_ADMIN


def _on_pid(request: Any, caller: Process) -> Iterator[Need]:
    """The `needs` of a call that acts on process `request.pid`: the caller must control it."""
    yield Control(request.pid)


class Spawn(Request[ProcessInfo]):
    """Start `app(sys, *args, **kwargs)` as a child process; returns its snapshot (with its
    pid). The arguments are checked against the app's signature first (EINVAL). With
    `durable=True` it survives the kernel (see `durable.wait`); `restart=RestartPolicy(...)`
    restarts it when it ends, as the policy says. It generates with the caller's model unless
    `model` names another (see `set_model`), loaded first."""

    call: ClassVar[str] = "spawn"
    capability: ClassVar[str | None] = capabilities.PROC_SPAWN
    positional: ClassVar[tuple[str, ...]] = ("app",)
    variadic: ClassVar[str | None] = "args"

    app: Any  # a coroutine function, a class with one as `main`, or "module:attr" / "file.py:attr"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)  # the app's keyword arguments
    name: str | None = Field(default=None, min_length=1, max_length=128)
    priority: int | None = OptionalPriority  # the caller's own by default
    caps: frozenset[str] | None = None  # narrows what the child may do; never widens
    quotas: Quotas | None = None
    # A durable child survives the kernel (its app must then be a reference or importable,
    # its arguments JSON); `restart` supervises it (and makes it durable).
    durable: bool = False
    restart: RestartPolicy | None = None
    model: str | None = Field(default=None, min_length=1, max_length=128)  # default: the caller's model

    def needs(self, caller: Process) -> Iterator[Need]:
        yield from _raising(caller, self.priority)
        if isinstance(self.app, str) and runs_a_file(self.app):
            yield capabilities.PROC_EXEC

    def effects(self, kernel: Kernel, caller: Process) -> Effects:
        granted = caller.capabilities if self.caps is None else capabilities.narrow(caller.capabilities, self.caps)
        beyond = sorted(granted - capabilities.DEFAULT_APP)
        return Effects(audit=f"the child may {', '.join(beyond)}" if beyond else None)


def runs_a_file(ref: str) -> bool:
    """Whether an app reference names a Python file ("path/app.py[:attr]"): running it runs
    whatever that file holds, which a process may have written itself."""
    return ref.partition(":")[0].endswith(".py")


class Wait(Request[ExitStatus]):
    """Wait for a process to end (at most `timeout` seconds), reap it, and say how it ended."""

    call: ClassVar[str] = "wait"
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("pid", "timeout")
    needs = _on_pid

    pid: int
    timeout: float | None = Field(default=None, ge=0)

    def ingress(self, kernel: Kernel, caller: Process, answer: Any) -> str | None:
        if isinstance(answer, ExitStatus) and answer.untrusted:
            return f"the result of process {answer.pid} ({answer.name}), which had read untrusted text"
        return None


class Kill(Request[None]):
    """End a process now; its in-flight generation is cancelled."""

    call: ClassVar[str] = "kill"
    positional: ClassVar[tuple[str, ...]] = ("pid", "reason")
    needs = _on_pid

    pid: int
    reason: str = "killed"


class Suspend(Request[None]):
    """Stop a process at its next syscall; its generation leaves the batch."""

    call: ClassVar[str] = "suspend"
    positional: ClassVar[tuple[str, ...]] = ("pid",)
    needs = _on_pid

    pid: int


class Resume(Request[None]):
    """Let a suspended process go on."""

    call: ClassVar[str] = "resume"
    positional: ClassVar[tuple[str, ...]] = ("pid",)
    needs = _on_pid

    pid: int


class Nice(Request[None]):
    """Set the priority (nice value, -20..19, lower first) of a process, by default the caller."""

    call: ClassVar[str] = "nice"
    positional: ClassVar[tuple[str, ...]] = ("priority", "pid")

    priority: int = Priority
    pid: int | None = None

    def needs(self, caller: Process) -> Iterator[Need]:
        if self.pid is not None:
            yield Control(self.pid)
        yield from _raising(caller, self.priority)

    def reapply_on_replay(self) -> bool:
        return self.pid is None  # a resumed process keeps the priority it gave itself


class SetModel(Request[None]):
    """Move a process (by default the caller) to another variant of the kernel's model: a
    derived model or LoRA adapter of it from the library, loaded now if need be (ENODEV if
    it is unknown or of another base), served in the same batches as the rest; None or the
    model's own name: back to it. Its context window is kept."""

    call: ClassVar[str] = "set_model"
    positional: ClassVar[tuple[str, ...]] = ("model", "pid")

    model: str | None = Field(min_length=1, max_length=128)
    pid: int | None = None

    def needs(self, caller: Process) -> Iterator[Need]:
        if self.pid is not None:
            yield Control(self.pid)

    def reapply_on_replay(self) -> bool:
        return self.pid is None  # a resumed process keeps the model it chose for itself


class SetStatus(Request[None]):
    """Say in one line what the caller is doing ("step 12/100 loss 2.31"), shown by `ps` and
    `top` until it says something else; "" clears it."""

    call: ClassVar[str] = "set_status"
    replay_matches_arguments: ClassVar[bool] = False  # its answer is None, whatever it says
    positional: ClassVar[tuple[str, ...]] = ("text",)

    text: str = Field(max_length=MAX_STATUS_CHARS)

    def reapply_on_replay(self) -> bool:
        return True  # a resumed process shows what it last said


class Ps(Request[list[ProcessInfo]]):
    """The live processes (and, with `include_ended`, the ended ones not yet reaped)."""

    call: ClassVar[str] = "ps"
    positional: ClassVar[tuple[str, ...]] = ("include_ended",)

    include_ended: bool = False


class GetPid(Request[int]):
    call: ClassVar[str] = "getpid"


class Sleep(Request[None]):
    """Wait `seconds`. A durable process's sleep is durable, as DBOS's is: resumed after a
    crash in the middle of it, the process sleeps only until the time it was to wake."""

    call: ClassVar[str] = "sleep"
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("seconds",)

    seconds: float = Field(ge=0)

    def waits_for(self) -> float:
        return self.seconds

    def waiting(self, seconds: float) -> Sleep:
        return self.model_copy(update={"seconds": max(0.0, seconds)})


class Stats(Request[KernelStatistics]):
    """The kernel's figures: its processes, and the model engine's queue, batch and rate."""

    call: ClassVar[str] = "stats"


class Trace(Request[list[TraceEvent]]):
    """The most recent syscalls (at most `limit`), oldest first: of process `pid` (which the
    caller must control), or of every process (which needs proc.admin)."""

    call: ClassVar[str] = "trace"
    positional: ClassVar[tuple[str, ...]] = ("pid",)

    pid: int | None = None
    limit: int = Field(default=1000, ge=1, le=params.TRACE_SIZE)

    def needs(self, caller: Process) -> Iterator[Need]:
        yield capabilities.PROC_ADMIN if self.pid is None else Control(self.pid, gone_ok=True)


async def sys_spawn(kernel: Kernel, caller: Process, req: Spawn) -> ProcessInfo:
    priority = caller.priority if req.priority is None else req.priority
    return await kernel.spawn(req.app, *req.args, durable=req.durable, restart=req.restart, model=req.model,
                              kwargs=req.kwargs, name=req.name, priority=priority, caps=req.caps, quotas=req.quotas,
                              parent=caller)


async def sys_wait(kernel: Kernel, caller: Process, req: Wait) -> ExitStatus:
    if req.pid == caller.pid:
        raise InvalidRequest("a process cannot wait for itself")
    return await kernel.wait(req.pid, req.timeout)


def _unprotected(kernel: Kernel, pid: int, action: str) -> int:
    if pid in kernel.protected:
        name = kernel.procs.get(pid).name
        raise PermissionDenied(f"process {pid} ({name}) is protected: no process may {action} it "
                               "(stop the daemon it belongs to instead)")
    return pid


async def sys_kill(kernel: Kernel, caller: Process, req: Kill) -> None:
    kernel.kill(_unprotected(kernel, req.pid, "kill"), req.reason)


async def sys_suspend(kernel: Kernel, caller: Process, req: Suspend) -> None:
    if req.pid == caller.pid:
        raise InvalidRequest("a process cannot suspend itself (nobody would be left to resume it); sleep instead")
    kernel.suspend(_unprotected(kernel, req.pid, "suspend"))


async def sys_resume(kernel: Kernel, caller: Process, req: Resume) -> None:
    kernel.resume(req.pid)


async def sys_nice(kernel: Kernel, caller: Process, req: Nice) -> None:
    kernel.nice(_unprotected(kernel, caller.pid if req.pid is None else req.pid, "renice"), req.priority)


async def sys_set_model(kernel: Kernel, caller: Process, req: SetModel) -> None:
    await kernel.set_model(caller.pid if req.pid is None else req.pid, req.model)


async def sys_set_status(kernel: Kernel, caller: Process, req: SetStatus) -> None:
    caller.status = " ".join(req.text.split()) or None  # one line, whatever the text held


async def sys_ps(kernel: Kernel, caller: Process, req: Ps) -> list[ProcessInfo]:
    return kernel.ps(include_ended=req.include_ended)


async def sys_getpid(kernel: Kernel, caller: Process, req: GetPid) -> int:
    return caller.pid


async def sys_sleep(kernel: Kernel, caller: Process, req: Sleep) -> None:
    await anyio.sleep(req.seconds)


async def sys_stats(kernel: Kernel, caller: Process, req: Stats) -> KernelStatistics:
    return kernel.statistics()


async def sys_trace(kernel: Kernel, caller: Process, req: Trace) -> list[TraceEvent]:
    events = [e for e in kernel.trace if req.pid is None or e.pid == req.pid]
    return events[-req.limit:]


HANDLERS = {
    Spawn: sys_spawn, Wait: sys_wait, Kill: sys_kill, Suspend: sys_suspend, Resume: sys_resume,
    Nice: sys_nice, SetModel: sys_set_model, SetStatus: sys_set_status, Ps: sys_ps, GetPid: sys_getpid,
    Sleep: sys_sleep, Stats: sys_stats, Trace: sys_trace,
}
