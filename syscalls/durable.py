"""Durable-process syscalls: list them, wait for one, resume or cancel one.

A durable process (spawned with `durable=True`) outlives its kernel, so it is named by its
durable id, not by a pid (pids are per kernel and per boot). Listing and waiting need no
capability, as `ps` and a child's `wait` do not; resuming and cancelling another's work
need `proc.admin`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from llmos.kernel import capabilities
from llmos.kernel.abi import Request
from llmos.kernel.durable import DURABLE_ID_PATTERN, DurableInfo
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import ExitStatus, Process

DurableId = Field(min_length=1, max_length=64, pattern=DURABLE_ID_PATTERN)


class DurablePs(Request[list[DurableInfo]]):
    """The durable processes of this LLMOS_HOME (or cluster), newest first, with how far
    each got (`steps`: syscalls recorded in its current run)."""

    call: ClassVar[str] = "durable.ps"


class DurableInfoRequest(Request[DurableInfo]):
    """One durable process."""

    call: ClassVar[str] = "durable.info"
    positional: ClassVar[tuple[str, ...]] = ("id",)

    id: str = DurableId


class DurableWait(Request[ExitStatus]):
    """Wait for a durable process to end (wherever it runs, across restarts), at most
    `timeout` seconds, and say how it ended."""

    call: ClassVar[str] = "durable.wait"
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("id", "timeout")

    id: str = DurableId
    timeout: float | None = Field(default=None, ge=0)


class DurableResume(Request[DurableInfo]):
    """Run an unfinished (or cancelled) durable process again from its record (on this kernel,
    or in a cluster on whichever kernel has room)."""

    call: ClassVar[str] = "durable.resume"
    capability: ClassVar[str | None] = capabilities.PROC_ADMIN
    positional: ClassVar[tuple[str, ...]] = ("id",)

    id: str = DurableId


class DurableCancel(Request[None]):
    """Stop a durable process for good, wherever it runs; it is never resumed."""

    call: ClassVar[str] = "durable.cancel"
    capability: ClassVar[str | None] = capabilities.PROC_ADMIN
    positional: ClassVar[tuple[str, ...]] = ("id", "reason")

    id: str = DurableId
    reason: str = "cancelled"


async def sys_durable_ps(kernel: Kernel, caller: Process, req: DurablePs) -> list[DurableInfo]:
    return await kernel.durable_runtime().list()


async def sys_durable_info(kernel: Kernel, caller: Process, req: DurableInfoRequest) -> DurableInfo:
    return await kernel.durable_runtime().info(req.id)


async def sys_durable_wait(kernel: Kernel, caller: Process, req: DurableWait) -> ExitStatus:
    return await kernel.durable_runtime().wait(req.id, req.timeout)


async def sys_durable_resume(kernel: Kernel, caller: Process, req: DurableResume) -> DurableInfo:
    return await kernel.durable_runtime().resume(req.id)


async def sys_durable_cancel(kernel: Kernel, caller: Process, req: DurableCancel) -> None:
    await kernel.durable_runtime().cancel(req.id, req.reason)


__all__ = ["DURABLE_ID_PATTERN", "DurableCancel", "DurableInfoRequest", "DurablePs", "DurableResume", "DurableWait"]

HANDLERS = {DurablePs: sys_durable_ps, DurableInfoRequest: sys_durable_info, DurableWait: sys_durable_wait,
            DurableResume: sys_durable_resume, DurableCancel: sys_durable_cancel}
