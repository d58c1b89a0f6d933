"""Process syscalls: spawn, wait, kill, suspend, resume, nice, ps, getpid, sleep.

Handlers are thin: check the caller's rights and the arguments, then call the kernel.
A process may control itself and its descendants; anyone else needs `proc.admin`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
from pydantic import Field

from llmos.kernel import capabilities, params
from llmos.kernel.abi import Request
from llmos.kernel.errors import InvalidRequest, PermissionDenied
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import ExitStatus, Process, ProcessInfo, Quotas

Priority = Field(ge=params.NICE_MIN, le=params.NICE_MAX)


class Spawn(Request):
    call: ClassVar[str] = "spawn"
    capability: ClassVar[str | None] = capabilities.PROC_SPAWN

    app: Any  # a coroutine function, a class with one as `main`, or "module:attr" / "file.py:attr"
    args: tuple[Any, ...] = ()
    name: str | None = Field(default=None, min_length=1, max_length=128)
    priority: int | None = Priority
    caps: frozenset[str] | None = None  # narrows what the child may do; never widens
    quotas: Quotas | None = None


class Wait(Request):
    call: ClassVar[str] = "wait"
    blocking: ClassVar[bool] = True

    pid: int
    timeout: float | None = Field(default=None, ge=0)


class Kill(Request):
    call: ClassVar[str] = "kill"

    pid: int
    reason: str = "killed"


class Suspend(Request):
    call: ClassVar[str] = "suspend"

    pid: int


class Resume(Request):
    call: ClassVar[str] = "resume"

    pid: int


class Nice(Request):
    call: ClassVar[str] = "nice"

    pid: int
    priority: int = Priority


class Ps(Request):
    call: ClassVar[str] = "ps"

    include_ended: bool = False


class GetPid(Request):
    call: ClassVar[str] = "getpid"


class Sleep(Request):
    call: ClassVar[str] = "sleep"
    blocking: ClassVar[bool] = True

    seconds: float = Field(ge=0)


def _require_control(kernel: Kernel, caller: Process, pid: int) -> None:
    kernel.procs.get(pid)  # ESRCH before EPERM: say first that it does not exist
    if kernel.procs.is_descendant(pid, caller.pid) or capabilities.grants(caller.capabilities, capabilities.PROC_ADMIN):
        return
    raise PermissionDenied(f"process {caller.pid} may not control process {pid}: it is neither itself nor "
                           f"a descendant, and {capabilities.PROC_ADMIN!r} is not held")


def _require_priority(caller: Process, priority: int) -> None:
    if priority < caller.priority and not capabilities.grants(caller.capabilities, capabilities.PROC_ADMIN):
        raise PermissionDenied(f"raising priority above the caller's own ({caller.priority}) needs "
                               f"{capabilities.PROC_ADMIN!r}")


async def sys_spawn(kernel: Kernel, caller: Process, req: Spawn) -> ProcessInfo:
    priority = caller.priority if req.priority is None else req.priority
    _require_priority(caller, priority)
    proc = kernel.spawn_nowait(req.app, *req.args, name=req.name, priority=priority, caps=req.caps,
                               quotas=req.quotas, parent=caller)
    return proc.info()


async def sys_wait(kernel: Kernel, caller: Process, req: Wait) -> ExitStatus:
    if req.pid == caller.pid:
        raise InvalidRequest("a process cannot wait for itself")
    _require_control(kernel, caller, req.pid)
    return await kernel.wait(req.pid, req.timeout)


async def sys_kill(kernel: Kernel, caller: Process, req: Kill) -> None:
    _require_control(kernel, caller, req.pid)
    kernel.kill(req.pid, req.reason)


async def sys_suspend(kernel: Kernel, caller: Process, req: Suspend) -> None:
    if req.pid == caller.pid:
        raise InvalidRequest("a process cannot suspend itself (nobody would be left to resume it); sleep instead")
    _require_control(kernel, caller, req.pid)
    kernel.suspend(req.pid)


async def sys_resume(kernel: Kernel, caller: Process, req: Resume) -> None:
    _require_control(kernel, caller, req.pid)
    kernel.resume(req.pid)


async def sys_nice(kernel: Kernel, caller: Process, req: Nice) -> None:
    _require_control(kernel, caller, req.pid)
    _require_priority(caller, req.priority)
    kernel.nice(req.pid, req.priority)


async def sys_ps(kernel: Kernel, caller: Process, req: Ps) -> list[ProcessInfo]:
    return kernel.ps(include_ended=req.include_ended)


async def sys_getpid(kernel: Kernel, caller: Process, req: GetPid) -> int:
    return caller.pid


async def sys_sleep(kernel: Kernel, caller: Process, req: Sleep) -> None:
    await anyio.sleep(req.seconds)


HANDLERS = {
    Spawn: sys_spawn, Wait: sys_wait, Kill: sys_kill, Suspend: sys_suspend, Resume: sys_resume,
    Nice: sys_nice, Ps: sys_ps, GetPid: sys_getpid, Sleep: sys_sleep,
}
