"""What the kernel needs from durable execution, and the records it keeps.

A durable process survives its kernel: every syscall it makes is recorded with its result
(`kernel/journal.py`) before the result reaches it, and a kernel that boots again resumes
it by replaying the record. The engine that keeps the record and resumes the work is
llmos.durable (DBOS Transact); the kernel sees it as a `Durability`, plugged in by
llmos.boot as `kernel.durability`.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field

from llmos.kernel import params
from llmos.kernel.process import ExitStatus, ProcessInfo, ProcState, Quotas

if TYPE_CHECKING:
    from llmos.kernel.process import Process


DURABLE_ID_PATTERN = r"^[0-9a-f]+$"  # a durable process's id: hex digits (its supervisor workflow's id)


class RestartPolicy(BaseModel):
    """Supervision, as Erlang/OTP does it: whether a process that ended starts again
    (`never`; `on-failure`: after FAILED; `always`: after FAILED or EXITED), at most
    `max_restarts` times within `within_s` seconds; past that it is FAILED and its parent
    is told. A process killed on purpose (kill, cancel) is never restarted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    restart: Literal["never", "on-failure", "always"] = "never"
    max_restarts: int = Field(default=params.DURABLE_MAX_RESTARTS, ge=0, le=10_000)
    within_s: float = Field(default=params.DURABLE_RESTART_WINDOW_S, gt=0)

    def wants_restart(self, state: ProcState) -> bool:
        if self.restart == "always":
            return state in (ProcState.EXITED, ProcState.FAILED)
        return self.restart == "on-failure" and state is ProcState.FAILED


class DurableSpec(BaseModel):
    """What a durable process is, as recorded when it starts: enough to start it again in
    another Python process. Everything in it is JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app: str  # an importable reference: "package.module:attr" or "/abs/path/app.py:attr"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)
    name: str
    priority: int = params.DEFAULT_NICE
    capabilities: tuple[str, ...]  # already narrowed from the parent's
    quotas: Quotas = Field(default_factory=Quotas)
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    parent: int = params.KERNEL_PID  # the pid that spawned it, told if it fails for good (on the kernel that spawned it)
    parent_durable_id: str | None = None  # ... or, if that process is durable, its id (pids change across restarts)
    queue: str | None = None  # a cluster's queue its runs wait in for a kernel with room; None: run where spawned
    # Where the untrusted text its parent held came from (kernel/security.py): each run, on
    # any kernel, starts with it, as a child of that parent would.
    untrusted: tuple[str, ...] = ()
    model: str | None = None  # what it generates with (None: the kernel's own model), on every run


class DurableState(str, Enum):
    """Where a durable process is in its life (DBOS's workflow status, in llmos's words)."""

    QUEUED = "queued"  # waiting for a kernel to take it: in a cluster's queue, or just resumed
    RUNNING = "running"  # a live kernel runs it
    UNFINISHED = "unfinished"  # its kernel died (or shut down) before it ended: a boot resumes it
    EXITED = "exited"
    FAILED = "failed"
    KILLED = "killed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (DurableState.QUEUED, DurableState.RUNNING, DurableState.UNFINISHED)


class DurableInfo(BaseModel):
    """One durable process, as `ps --durable` shows it."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    app: str
    state: DurableState
    pid: int | None  # on the kernel that runs it now, if one does
    kernel: str | None  # the kernel (DBOS executor) that runs it or ran it last
    kernel_url: str | None = None  # that kernel's API, if it is alive and serves one (a cluster's `llmos serve`)
    steps: int  # syscalls recorded in its current run: how far it got
    restarts: int
    created_at: float
    updated_at: float
    reason: str | None = None


class Durability(Protocol):
    """The durable runtime a kernel uses (llmos.durable). Methods may block on the database."""

    async def spawn(self, spec: DurableSpec, parent: Process | None) -> ProcessInfo:
        """Record `spec` and start it as a durable process, a child of `parent` while that
        lives; its snapshot has `durable_id`."""

    async def wait(self, durable_id: str, timeout: float | None = None) -> ExitStatus:
        """How it ended, once it has (wherever it ran)."""

    async def list(self) -> list[DurableInfo]: ...

    async def info(self, durable_id: str) -> DurableInfo: ...

    async def resume(self, durable_id: str) -> DurableInfo:
        """Run an unfinished one (not running on a live kernel) again from its record."""

    async def cancel(self, durable_id: str, reason: str = "cancelled") -> None:
        """It stops for good, wherever it runs, and is never resumed."""


def exit_record(proc: Process) -> dict[str, Any]:
    """How an incarnation of a durable process ended, as JSON for the record."""
    result = proc.result
    try:
        pydantic_core.to_json(result)
    except Exception:  # what the app returned is not JSON: its text form is kept
        result = repr(result)
    return {"pid": proc.pid, "name": proc.name, "state": proc.state.name, "reason": proc.reason,
            "result": result, "traceback": proc.traceback, "ended_at": proc.ended_at}


def failed_record(spec: DurableSpec, reason: str) -> dict[str, Any]:
    """The record of a run whose process could not start (its app does not load)."""
    return {"pid": 0, "name": spec.name, "state": ProcState.FAILED.name, "reason": reason, "result": None,
            "traceback": None, "ended_at": time.time()}
