"""The process: its state machine, quotas, statistics and the snapshot `ps` shows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from llmos.kernel import params

if TYPE_CHECKING:
    from llmos.kernel.journal import Journal


class ProcState(IntEnum):
    """Ordered: everything from EXITED on is terminal, and each terminal state has a reason."""

    NEW = 0
    READY = 1
    RUNNING = 2
    BLOCKED = 3
    SUSPENDED = 4
    EXITED = 5
    KILLED = 6
    FAILED = 7

    @property
    def terminal(self) -> bool:
        return self >= ProcState.EXITED


class Quotas(BaseModel):
    """Limits over a process's whole life; None means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int | None = Field(default=params.DEFAULT_MAX_TOKENS, ge=1)
    max_syscalls: int | None = Field(default=params.DEFAULT_MAX_SYSCALLS, ge=1)
    deadline_s: float | None = Field(default=params.DEFAULT_DEADLINE_S, gt=0)


class ProcessStats(BaseModel):
    """Per-process accounting, updated by the dispatcher and the generation service."""

    syscalls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    syscall_time_s: float = 0.0  # time spent inside syscalls, blocked ones included
    generation_time_s: float = 0.0
    tool_calls: int = 0
    tool_time_s: float = 0.0  # wall time inside tool calls, failed ones included
    # Times it held the event loop past LOOP_STALL_S (a synchronous call in async code),
    # their total and the longest: every other process was frozen meanwhile (kernel/watchdog.py).
    loop_blocks: int = 0
    loop_blocked_s: float = 0.0
    loop_block_max_s: float = 0.0
    kv_bytes: int = 0  # KV memory its running generation holds now (kernel/blocks.py), 0 between generations

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ProcessInfo(BaseModel):
    """An immutable snapshot of one process, as `ps` and `spawn` return it."""

    model_config = ConfigDict(frozen=True)

    pid: int
    ppid: int
    name: str
    state: ProcState
    priority: int
    reason: str | None
    capabilities: frozenset[str]
    quotas: Quotas
    stats: ProcessStats
    started_at: float
    ended_at: float | None
    durable_id: str | None = None  # set for a durable process: its id across kernels and restarts
    untrusted: tuple[str, ...] = ()  # where untrusted text in its context came from (kernel/security.py)
    model: str | None = None  # the model it generates with if not the kernel's own (Kernel.set_model); None: that one
    status: str | None = None  # what it says it is doing (sys.set_status), for ps and top; None: nothing said

    @property
    def runtime_s(self) -> float:
        return (self.ended_at or time.time()) - self.started_at


class ExitStatus(BaseModel):
    """What `wait` returns: how the process ended and what its main returned."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    pid: int
    name: str
    state: ProcState
    reason: str | None
    result: Any = None
    traceback: str | None = None
    untrusted: bool = False  # it had read untrusted text (kernel/security.py): so has whoever reads its result

    @property
    def ok(self) -> bool:
        return self.state is ProcState.EXITED


@dataclass(eq=False)
class Process:
    """The kernel's live record of a process. Only the kernel mutates it."""

    pid: int
    ppid: int
    name: str
    priority: int
    capabilities: frozenset[str]
    quotas: Quotas
    state: ProcState = ProcState.NEW
    reason: str | None = None
    result: Any = None
    kill_reason: str | None = None  # why kill() was called, until the process has ended
    lost_with_kernel: bool = False  # ended because its kernel shut down, not by itself or a kill
    traceback: str | None = None  # of the exception that failed it
    stats: ProcessStats = field(default_factory=ProcessStats)
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    # Runtime plumbing, set up by the kernel when the process starts.
    cancel_scope: anyio.CancelScope | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    runnable: anyio.Event = field(default_factory=anyio.Event)  # replaced by an unset one while suspended
    mailbox_send: Any = None
    mailbox_recv: Any = None
    context: Any = None  # its context window (kernel.memory makes it on first use)
    state_before_suspend: ProcState | None = None
    waits: int = 0  # its blocking syscalls in flight (its tasks may issue several at once)
    journal: Journal | None = None  # a durable process's record (kernel/journal.py), through which its syscalls go
    # Where the untrusted text in its context came from (kernel/security.py); empty: none.
    untrusted: list[str] = field(default_factory=list)
    model: str | None = None  # the model it generates with, if not the kernel's (Kernel.set_model)
    base: str | None = None  # the base `model` runs on, if not the kernel's model (kernel/model_pool.py)
    status: str | None = None  # its own one-line account of its progress (sys.set_status)

    def __post_init__(self) -> None:
        self.runnable.set()

    def info(self) -> ProcessInfo:
        return ProcessInfo(
            pid=self.pid,
            ppid=self.ppid,
            name=self.name,
            state=self.state,
            priority=self.priority,
            reason=self.reason,
            capabilities=self.capabilities,
            quotas=self.quotas,
            stats=self.stats.model_copy(),
            started_at=self.started_at,
            ended_at=self.ended_at,
            durable_id=None if self.journal is None else self.journal.durable_id,
            untrusted=tuple(self.untrusted),
            model=self.model,
            status=self.status,
        )

    def exit_status(self) -> ExitStatus:
        return ExitStatus(pid=self.pid, name=self.name, state=self.state, reason=self.reason, result=self.result,
                          traceback=self.traceback, untrusted=bool(self.untrusted))
