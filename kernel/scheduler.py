"""Decides whose generation requests the model serves, step by step. Pure: no torch, no I/O.

Step-shaped like vLLM's scheduler: `add` requests, `schedule()` returns the set the engine
runs for the next token, `update_from_output` records what that step produced. The
scheduler owns admission: the engine runs exactly the requests it names. With a driver
that keeps K/V in blocks (`kv`, kernel/blocks.py), admission is by the KV budget too: a
request runs only once its blocks are given (first come, first served: a request that does
not fit stops admission rather than being overtaken), and a running request that needs a
block more when none is left preempts the least important runner, whose blocks go back
(its computed prefix stays cached, so it resumes cheaply). It works on the one request
record (`GenerationJob`) and writes only its scheduling fields. Invariant: every request is
in exactly one of `waiting` or `running` until it finishes or is removed; `running` never
exceeds `max_batch`; only running requests hold KV blocks; a suspended owner's requests
never run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from llmos.kernel import params
from llmos.kernel.blocks import BlockManager
from llmos.kernel.errors import ConfigError, QueueFull
from llmos.kernel.model import GenerationJob
from llmos.kernel.stats import SchedulerStatistics


@dataclass(frozen=True)
class SchedulerOutput:
    running: tuple[int, ...]  # request ids the engine runs this step
    admitted: tuple[int, ...] = ()  # of which newly admitted
    preempted: tuple[int, ...] = ()  # taken out of the running set this step


@dataclass(frozen=True)
class StepOutput:
    tokens: dict[int, int] = field(default_factory=dict)  # request id -> tokens decoded this step
    finished: frozenset[int] = frozenset()


Preemption = Literal["never", "quantum", "priority"]


class Policy(Protocol):
    name: str
    preemption: Preemption

    def key(self, req: GenerationJob) -> tuple[int, ...]: ...


class Fifo:
    name, preemption = "fifo", "never"

    def key(self, req: GenerationJob) -> tuple[int, ...]:
        return (req.arrival,)


class PriorityPolicy:
    """Lowest nice value first; a more important arrival preempts the least important runner."""

    name, preemption = "priority", "priority"

    def key(self, req: GenerationJob) -> tuple[int, ...]:
        return (req.priority, req.arrival)


class RoundRobin:
    """Each request runs for a quantum of tokens, then yields its slot to one that waits."""

    name, preemption = "rr", "quantum"

    def key(self, req: GenerationJob) -> tuple[int, ...]:
        return (req.last_turn, req.arrival)  # never-run first, then least recently preempted


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
                 quantum: int = params.RR_QUANTUM_TOKENS, max_queue: int = params.MAX_QUEUE,
                 suspended: set[int] | None = None) -> None:
        """`suspended`: the set of suspended pids, shared with the kernel's other schedulers
        (one per base model loaded), so a suspension holds on every model."""
        if max_batch < 1 or quantum < 1 or max_queue < 1:
            raise ConfigError("max_batch, quantum and max_queue must be at least 1")
        self.policy = make_policy(policy)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.quantum = quantum
        self.waiting: dict[int, GenerationJob] = {}
        self.running: dict[int, GenerationJob] = {}
        self.preemptions = 0
        self.kv: BlockManager | None = None  # the driver's KV blocks, if it keeps them so (set by the kernel)
        self.suspended: set[int] = suspended if suspended is not None else set()
        self._arrivals = itertools.count()
        self._turns = itertools.count()
        # Called after every change that may give a step work (a request added, an owner
        # resumed or re-prioritised): the generation service wakes its idle loop with it.
        self.on_change: Callable[[], None] = lambda: None

    # -- requests in and out ------------------------------------------------------------
    def add(self, req: GenerationJob) -> None:
        if req.id in self.waiting or req.id in self.running:
            raise ValueError(f"request {req.id} is already scheduled")
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(f"{len(self.waiting)} generations already wait for the model (max_queue); try again shortly")
        req.arrival = next(self._arrivals)
        self.waiting[req.id] = req
        self.on_change()

    def remove(self, req_id: int) -> None:
        """Forget a request (finished elsewhere, or its process was killed)."""
        self.waiting.pop(req_id, None)
        req = self.running.pop(req_id, None)
        if req is not None and self.kv is not None:
            self.kv.release(req)

    def remove_owner(self, pid: int) -> list[int]:
        ids = [r.id for r in (*self.waiting.values(), *self.running.values()) if r.pid == pid]
        for req_id in ids:
            self.remove(req_id)
        return ids

    # -- process control ------------------------------------------------------------------
    def suspend(self, pid: int) -> None:
        self.suspended.add(pid)
        self.on_change()

    def resume(self, pid: int) -> None:
        self.suspended.discard(pid)
        self.on_change()

    def set_priority(self, pid: int, priority: int) -> None:
        for req in (*self.waiting.values(), *self.running.values()):
            if req.pid == pid:
                req.priority = priority
        self.on_change()

    # -- the step ---------------------------------------------------------------------------
    def _eligible(self) -> list[GenerationJob]:
        return sorted((r for r in self.waiting.values() if r.pid not in self.suspended), key=self.policy.key)

    def has_work(self) -> bool:
        return bool(self.running) or self.someone_waits()

    def someone_waits(self) -> bool:
        """Whether a request that may run waits for a slot or for KV blocks."""
        return any(r.pid not in self.suspended for r in self.waiting.values())

    def schedule(self) -> SchedulerOutput:
        """Preempt what must yield, then fill free slots from the waiting line."""
        preempted = self._preempt()
        preempted += self._make_room()
        admitted = []
        for req in self._eligible()[: self.max_batch - len(self.running)]:
            if self.kv is not None and not self.kv.allocate(req):
                break  # its blocks do not fit: it goes first once they do
            del self.waiting[req.id]
            self.running[req.id] = req
            req.turn_tokens = 0
            admitted.append(req.id)
        return SchedulerOutput(running=tuple(self.running), admitted=tuple(admitted), preempted=tuple(preempted))

    def _preempt(self) -> list[int]:
        victims = [r for r in self.running.values() if r.pid in self.suspended]
        waiting = self._eligible()
        short = len(waiting) - (self.max_batch - len(self.running) + len(victims))  # waiters without a slot
        if short > 0 and self.policy.preemption == "quantum":
            spent = [r for r in self.running.values() if r.turn_tokens >= self.quantum and r not in victims]
            victims += sorted(spent, key=lambda r: -r.turn_tokens)[:short]
        elif short > 0 and self.policy.preemption == "priority":
            runners = sorted((r for r in self.running.values() if r not in victims), key=self.policy.key)
            for newcomer in waiting[:short]:
                if runners and self.policy.key(newcomer) < self.policy.key(runners[-1]):
                    victims.append(runners.pop())
        for req in victims:
            self._requeue(req)
        return [r.id for r in victims]

    def _make_room(self) -> list[int]:
        """Give every running request the KV blocks its next step writes, the most important
        first; when none are left, preempt the least important runner (perhaps the asker)."""
        if self.kv is None:
            return []
        preempted = []
        for req in sorted(self.running.values(), key=self.policy.key):
            while req.id in self.running and not self.kv.grow(req):
                victim = max(self.running.values(), key=self.policy.key)
                self._requeue(victim)
                preempted.append(victim.id)
        return preempted

    def _requeue(self, req: GenerationJob) -> None:
        """Take a running request out (its blocks go back) and make it wait again."""
        del self.running[req.id]
        if self.kv is not None:
            self.kv.release(req)
        req.last_turn = next(self._turns)
        self.waiting[req.id] = req
        self.preemptions += 1

    def update_from_output(self, output: StepOutput) -> None:
        """Account the tokens a step decoded; finished requests leave."""
        for req_id, n in output.tokens.items():
            req = self.running.get(req_id)
            if req is not None:
                req.turn_tokens += n
        for req_id in output.finished:
            self.remove(req_id)

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(policy=self.policy.name, waiting=len(self.waiting), running=len(self.running),
                                   preemptions=self.preemptions, suspended_owners=len(self.suspended))
