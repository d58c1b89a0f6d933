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
    outcome: str  # "ok" or the errno name


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


class KernelStatistics(BaseModel):
    model_config = ConfigDict(frozen=True)

    booted_at: float
    live_processes: int
    syscalls: int  # made by every process so far, the ended ones' included
    scheduler: SchedulerStatistics
    generation: GenerationStatistics | None  # None for a kernel without a model
