"""Decides whose generation requests the model serves next. Pure: no torch, no I/O.

Step-shaped like vLLM's scheduler: `add` requests, `schedule()` picks the next batch and
how many tokens it may decode, `update_from_output` records what happened. Invariant:
every request is in exactly one of `waiting` or `running` until it finishes or is
removed, and a suspended owner's requests are never picked.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol

from llmos.kernel import params
from llmos.kernel.errors import ConfigError


@dataclass
class SchedRequest:
    """The scheduler's view of one generation request."""

    id: int
    pid: int
    priority: int  # nice value: lower is served first under the priority policy
    max_tokens: int
    done_tokens: int = 0
    arrival: int = 0  # set by the scheduler: order of arrival
    served_round: int = -1  # last round it was in a batch (round-robin uses it)

    @property
    def remaining(self) -> int:
        return self.max_tokens - self.done_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    batch: tuple[int, ...]  # request ids to run now
    max_steps: int  # tokens each may decode before the scheduler is asked again


@dataclass(frozen=True)
class StepOutput:
    tokens: dict[int, int] = field(default_factory=dict)  # request id -> tokens decoded this step
    finished: frozenset[int] = frozenset()


class Policy(Protocol):
    name: str
    preempts: bool  # True: a running request goes back in line after one quantum

    def key(self, req: SchedRequest) -> tuple[int, ...]: ...


class Fifo:
    name, preempts = "fifo", False

    def key(self, req: SchedRequest) -> tuple[int, ...]:
        return (req.arrival,)


class PriorityPolicy:
    name, preempts = "priority", False

    def key(self, req: SchedRequest) -> tuple[int, ...]:
        return (req.priority, req.arrival)


class RoundRobin:
    name, preempts = "rr", True

    def key(self, req: SchedRequest) -> tuple[int, ...]:
        return (req.served_round, req.arrival)  # least recently served first


POLICIES: dict[str, type[Policy]] = {
    "fifo": Fifo,
    "priority": PriorityPolicy,
    "rr": RoundRobin,
    "round-robin": RoundRobin,
}


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ConfigError(f"unknown scheduling policy {name!r}; choose one of {sorted(POLICIES)}") from None


class Scheduler:
    def __init__(self, policy: str = params.DEFAULT_POLICY, max_batch: int = params.MAX_BATCH,
                 quantum: int = params.RR_QUANTUM_TOKENS) -> None:
        if max_batch < 1 or quantum < 1:
            raise ConfigError("max_batch and quantum must be at least 1")
        self.policy = make_policy(policy)
        self.max_batch = max_batch
        self.quantum = quantum
        self.waiting: dict[int, SchedRequest] = {}
        self.running: dict[int, SchedRequest] = {}
        self._suspended: set[int] = set()
        self._arrivals = itertools.count()
        self._round = 0

    # -- requests in and out ------------------------------------------------------------
    def add(self, req: SchedRequest) -> None:
        if req.id in self.waiting or req.id in self.running:
            raise ValueError(f"request {req.id} is already scheduled")
        req.arrival = next(self._arrivals)
        self.waiting[req.id] = req

    def remove(self, req_id: int) -> None:
        """Forget a request (finished elsewhere, or its process was killed)."""
        self.waiting.pop(req_id, None)
        self.running.pop(req_id, None)

    def remove_owner(self, pid: int) -> list[int]:
        ids = [r.id for r in (*self.waiting.values(), *self.running.values()) if r.pid == pid]
        for req_id in ids:
            self.remove(req_id)
        return ids

    # -- process control ------------------------------------------------------------------
    def suspend(self, pid: int) -> None:
        self._suspended.add(pid)

    def resume(self, pid: int) -> None:
        self._suspended.discard(pid)

    def set_priority(self, pid: int, priority: int) -> None:
        for req in (*self.waiting.values(), *self.running.values()):
            if req.pid == pid:
                req.priority = priority

    # -- the step ---------------------------------------------------------------------------
    def has_work(self) -> bool:
        return any(r.pid not in self._suspended for r in self.waiting.values())

    def schedule(self) -> SchedulerOutput:
        """Move the best waiting requests into the running batch, up to `max_batch`."""
        free = self.max_batch - len(self.running)
        eligible = [r for r in self.waiting.values() if r.pid not in self._suspended]
        for req in sorted(eligible, key=self.policy.key)[:max(free, 0)]:
            del self.waiting[req.id]
            self.running[req.id] = req
            req.served_round = self._round
        self._round += 1
        batch = tuple(self.running)
        return SchedulerOutput(batch=batch, max_steps=self._max_steps(batch))

    def _max_steps(self, batch: tuple[int, ...]) -> int:
        if not batch:
            return 0
        longest = max(self.running[i].remaining for i in batch)
        return min(longest, self.quantum) if self.policy.preempts else longest

    def update_from_output(self, output: StepOutput) -> None:
        """Account decoded tokens; finished requests leave, the rest go back in line if preempted."""
        for req_id, n in output.tokens.items():
            req = self.running.get(req_id)
            if req is not None:
                req.done_tokens += n
        for req_id in output.finished:
            self.running.pop(req_id, None)
        # A static batch ends as a whole: whatever did not finish waits for its next turn.
        for req_id in list(self.running):
            req = self.running.pop(req_id)
            if req.remaining > 0:
                self.waiting[req_id] = req

    def statistics(self) -> dict[str, int | str]:
        return {"policy": self.policy.name, "waiting": len(self.waiting), "running": len(self.running),
                "suspended_owners": len(self._suspended)}
