"""What the kernel reports about itself: immutable snapshots (Trio's `statistics()` style),
and the trace event every syscall leaves. All are JSON-able, for `top`, `trace` and
remote callers."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field


class TraceEvent(NamedTuple):
    at: float  # wall-clock time the call began
    pid: int
    call: str
    duration_s: float
    outcome: str  # "ok" or the errno name; for the watchdog's "loop.blocked": "blocked", "killed", "gc" or "starved"


class SchedulerStatistics(BaseModel):
    model_config = ConfigDict(frozen=True)

    policy: str
    waiting: int  # requests in line for a batch slot
    running: int  # requests in the batch
    preemptions: int  # times a running request was taken out of the batch, so far
    suspended_owners: int  # processes whose requests may not run now


class GenerationStatistics(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    scheduler: SchedulerStatistics
    steps: int  # engine steps so far
    tokens: int  # tokens decoded so far
    tokens_per_s: float  # over the last few seconds
    driver: dict[str, int] = Field(default_factory=dict)  # the driver's own counters (prefix cache hits...)


class LoopStall(BaseModel):
    """One time the event loop was held past LOOP_STALL_S, and by whom (kernel/watchdog.py)."""

    model_config = ConfigDict(frozen=True)

    pid: int  # the process whose code held the loop; 0: no process's
    name: str  # its name; for pid 0 "kernel" (the kernel's own code), "gc" (Python's cyclic GC) or "os" (no CPU)
    where: str  # the innermost Python frame the watchdog saw: "function (file:line)"
    at: float  # wall-clock time the loop stopped answering
    duration_s: float
    killed: bool  # stopped for holding the loop past LOOP_BLOCK_KILL_S


class LoopStatistics(BaseModel):
    """The event loop's lag: how late its heartbeat wakes (over the last LOOP_LAG_SAMPLES beats)."""

    model_config = ConfigDict(frozen=True)

    heartbeat_s: float
    lag_p50_s: float
    lag_p99_s: float
    lag_max_s: float
    stalls: int  # times since boot the loop was held past LOOP_STALL_S
    blocked_s: float  # their total time
    last_stall: LoopStall | None


class KernelStatistics(BaseModel):
    model_config = ConfigDict(frozen=True)

    booted_at: float
    live_processes: int
    syscalls: int  # made by every process so far, the ended ones' included
    scheduler: SchedulerStatistics
    generation: GenerationStatistics | None  # None for a kernel without a model
    loop: LoopStatistics | None = None  # None when the watchdog is off (LOOP_HEARTBEAT_S = 0)
    # The loops of the other base models loaded beside the kernel's own (kernel/model_pool.py)
    models: tuple[GenerationStatistics, ...] = ()
