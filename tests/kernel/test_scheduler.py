"""The scheduler on its own: no model, no kernel, no event loop."""

from __future__ import annotations

import pytest

from llmos.kernel.blocks import BlockManager
from llmos.kernel.errors import ConfigError
from llmos.kernel.model import GenerationJob, SamplingParams
from llmos.kernel.scheduler import POLICIES, Scheduler, StepOutput
from llmos.kernel.stats import SchedulerStatistics


def req(i: int, pid: int | None = None, priority: int = 0, max_tokens: int = 10) -> GenerationJob:
    return GenerationJob(id=i, pid=i if pid is None else pid, sampling=SamplingParams(max_tokens=max_tokens),
                         priority=priority)


def decode(s: Scheduler, running: tuple[int, ...], finished: frozenset[int] = frozenset()) -> None:
    """What the engine does to the running requests in a step: a token each."""
    for i in running:
        s.running[i].token_ids.append(0)
    s.update_from_output(StepOutput(tokens={i: 1 for i in running}, finished=finished))


def step(s: Scheduler, finished: tuple[int, ...] = ()) -> tuple[int, ...]:
    """One engine step: schedule, every running request decodes a token, some finish."""
    plan = s.schedule()
    decode(s, plan.running, frozenset(finished))
    return plan.running


def run_to_end(s: Scheduler, limit: int = 1000) -> list[tuple[int, ...]]:
    """Step until everything finishes, each request ending after max_tokens tokens."""
    steps = []
    while s.has_work() and len(steps) < limit:
        plan = s.schedule()
        steps.append(plan.running)
        done = [i for i in plan.running if s.running[i].max_new_tokens == 1]
        decode(s, plan.running, frozenset(done))
    return steps


@pytest.mark.parametrize(("name", "expected", "preemption"),
                         [("fifo", "fifo", "never"), ("priority", "priority", "priority"), ("rr", "rr", "quantum"),
                          ("round-robin", "rr", "quantum")])
def test_policy_names(name: str, expected: str, preemption: str) -> None:
    policy = Scheduler(name).policy
    assert (policy.name, policy.preemption) == (expected, preemption)


def test_unknown_policy_lists_the_names() -> None:
    with pytest.raises(ConfigError) as err:
        Scheduler("lottery")
    assert "lottery" in str(err.value) and all(name in str(err.value) for name in POLICIES)


@pytest.mark.parametrize("bad", [{"max_batch": 0}, {"quantum": 0}])
def test_bad_settings_are_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError):
        Scheduler("fifo", **bad)


def test_empty_scheduler_has_no_work() -> None:
    s = Scheduler()
    assert not s.has_work()
    assert s.schedule().running == ()


def test_adding_a_request_twice_is_refused() -> None:
    s = Scheduler()
    s.add(req(1))
    with pytest.raises(ValueError):
        s.add(req(1))


def test_fifo_admits_in_arrival_order_up_to_max_batch() -> None:
    s = Scheduler("fifo", max_batch=2)
    for i in (3, 1, 2):
        s.add(req(i))
    plan = s.schedule()
    assert plan.running == (3, 1) and plan.admitted == (3, 1)
    assert list(s.waiting) == [2]


def test_a_freed_slot_is_filled_at_the_next_step() -> None:
    s = Scheduler("fifo", max_batch=2)
    for i in (1, 2, 3):
        s.add(req(i))
    assert step(s, finished=(1,)) == (1, 2)
    plan = s.schedule()
    assert plan.running == (2, 3) and plan.admitted == (3,)


def test_newcomers_join_a_running_batch_at_token_granularity() -> None:
    s = Scheduler("fifo", max_batch=4)
    s.add(req(1))
    assert step(s) == (1,)
    s.add(req(2))
    plan = s.schedule()
    assert plan.running == (1, 2) and plan.admitted == (2,)


def test_fifo_never_preempts_and_ignores_priority() -> None:
    s = Scheduler("fifo", max_batch=1, quantum=1)
    s.add(req(1, priority=19))
    step(s)
    s.add(req(2, priority=-20))
    assert [step(s) for _ in range(3)] == [(1,), (1,), (1,)]
    assert s.preemptions == 0


def test_every_request_gets_exactly_its_tokens_under_each_policy() -> None:
    for policy in ("fifo", "priority", "rr"):
        s = Scheduler(policy, max_batch=2, quantum=3)
        for i, n in enumerate((5, 1, 7, 4), start=1):
            s.add(req(i, max_tokens=n))
        steps = run_to_end(s)
        served = {i: sum(i in running for running in steps) for i in (1, 2, 3, 4)}
        assert served == {1: 5, 2: 1, 3: 7, 4: 4}, policy
        assert all(len(running) <= 2 for running in steps)


def test_priority_admits_lowest_nice_first_then_arrival() -> None:
    s = Scheduler("priority", max_batch=2)
    for i, nice in ((1, 5), (2, -3), (3, 5), (4, 0)):
        s.add(req(i, priority=nice))
    assert s.schedule().running == (2, 4)


def test_priority_preempts_the_least_important_runner_for_a_more_important_arrival() -> None:
    s = Scheduler("priority", max_batch=2)
    s.add(req(1, priority=0))
    s.add(req(2, priority=10))
    step(s)
    s.add(req(3, priority=-5))
    plan = s.schedule()
    assert plan.preempted == (2,) and plan.admitted == (3,)
    assert set(plan.running) == {1, 3} and 2 in s.waiting


def test_priority_does_not_preempt_for_an_equal_or_lower_priority() -> None:
    s = Scheduler("priority", max_batch=1)
    s.add(req(1, priority=0))
    step(s)
    s.add(req(2, priority=0))
    s.add(req(3, priority=3))
    assert s.schedule().preempted == ()


def test_rr_preempts_after_a_quantum_only_when_someone_waits() -> None:
    s = Scheduler("rr", max_batch=1, quantum=2)
    s.add(req(1))
    assert [step(s) for _ in range(4)] == [(1,)] * 4  # alone: no preemption however long it runs
    s.add(req(2))
    plan = s.schedule()
    assert plan.preempted == (1,) and plan.running == (2,)


def test_rr_takes_turns_by_quantum() -> None:
    s = Scheduler("rr", max_batch=1, quantum=2)
    for i in (1, 2, 3):
        s.add(req(i, max_tokens=4))
    steps = run_to_end(s)
    assert steps == [(1,), (1,), (2,), (2,), (3,), (3,), (1,), (1,), (2,), (2,), (3,), (3,)]


def test_rr_a_short_newcomer_gets_in_within_a_quantum() -> None:
    s = Scheduler("rr", max_batch=2, quantum=4)
    for i in (1, 2):
        s.add(req(i, max_tokens=100))
    for _ in range(2):
        step(s)
    s.add(req(3, max_tokens=1))
    waited = 0
    while 3 not in s.schedule().running:
        s.update_from_output(StepOutput(tokens={1: 1, 2: 1}))
        waited += 1
    assert waited <= 2  # the runners' quantum (4) was half spent


def test_suspended_owner_leaves_the_batch_and_returns_on_resume() -> None:
    s = Scheduler("fifo", max_batch=2)
    s.add(req(1, pid=7))
    s.add(req(2, pid=8))
    step(s)
    s.suspend(7)
    plan = s.schedule()
    assert plan.preempted == (1,) and plan.running == (2,)
    assert s.has_work()
    s.remove(2)
    assert not s.has_work()  # only a suspended owner's request is left
    s.resume(7)
    assert s.schedule().running == (1,)


def test_set_priority_reorders_waiting_requests_of_that_owner() -> None:
    s = Scheduler("priority", max_batch=1)
    s.add(req(1, pid=1))
    s.add(req(2, pid=2))
    s.set_priority(2, -1)
    assert s.schedule().running == (2,)


def test_remove_and_remove_owner() -> None:
    s = Scheduler("fifo", max_batch=1)
    for i, pid in ((1, 5), (2, 5), (3, 6)):
        s.add(req(i, pid=pid))
    s.schedule()
    assert sorted(s.remove_owner(5)) == [1, 2]
    assert not s.running and list(s.waiting) == [3]
    s.remove(3)
    s.remove(99)  # unknown ids are ignored
    assert not s.has_work()


def test_update_from_output_accounts_tokens_and_drops_finished() -> None:
    s = Scheduler("rr", max_batch=2, quantum=8)
    s.add(req(1))
    s.add(req(2))
    s.schedule()
    s.update_from_output(StepOutput(tokens={1: 3, 2: 1, 99: 4}, finished=frozenset({2})))
    assert s.running[1].turn_tokens == 3
    assert 2 not in s.running and 2 not in s.waiting


def test_statistics() -> None:
    s = Scheduler("rr", max_batch=1, quantum=1)
    s.add(req(1))
    s.add(req(2))
    step(s)
    s.schedule()
    assert s.statistics() == SchedulerStatistics(policy="rr", waiting=1, running=1, preemptions=1, suspended_owners=0)


# -- admission by KV blocks (kernel/blocks.py) --------------------------------------------------------
def kv_req(i: int, prompt_tokens: int, priority: int = 0, max_tokens: int = 40) -> GenerationJob:
    job = req(i, priority=priority, max_tokens=max_tokens)
    job.prompt_ids = [i * 1000 + t for t in range(prompt_tokens)]  # no two requests share a prefix
    return job


def kv_step(s: Scheduler, finished: tuple[int, ...] = ()) -> tuple[int, ...]:
    """As the engine: every running request computes what it was given, then decodes a token."""
    plan = s.schedule()
    for i in plan.running:
        job = s.running[i]
        job.computed = len(job.prompt_ids) + len(job.token_ids)
    decode(s, plan.running, frozenset(finished))
    return plan.running


def test_admission_stops_at_the_first_request_whose_blocks_do_not_fit() -> None:
    s = Scheduler("fifo", max_batch=8)
    s.kv = BlockManager(1 + 5)  # 5 usable blocks of 16 tokens
    for i, tokens in ((1, 40), (2, 40), (3, 10)):  # 3, 3 and 1 blocks
        s.add(kv_req(i, tokens))
    plan = s.schedule()
    assert plan.running == (1,)  # 2 does not fit; 3 would, but first come, first served
    assert list(s.waiting) == [2, 3] and s.kv.blocks_held(s.running[1]) == 3


def test_a_finished_request_gives_its_blocks_to_the_next() -> None:
    s = Scheduler("fifo", max_batch=8)
    s.kv = BlockManager(1 + 5)
    s.add(kv_req(1, 40))
    s.add(kv_req(2, 40))
    assert kv_step(s, finished=(1,)) == (1,)
    assert s.kv.statistics()["kv_blocks_held"] == 0  # released as it finished (its full blocks stay cached)
    assert s.schedule().running == (2,)


def test_a_runner_short_of_a_block_preempts_the_least_important() -> None:
    s = Scheduler("priority", max_batch=8)
    s.kv = BlockManager(1 + 4)
    s.add(kv_req(1, 32, priority=0))  # 2 blocks, full: its first decoded token needs a third
    s.add(kv_req(2, 32, priority=5))  # 2 blocks
    assert kv_step(s) == (1, 2)
    plan = s.schedule()  # both need a block more; only one can have it
    assert plan.running == (1,) and plan.preempted == (2,)
    assert s.kv.blocks_held(s.running[1]) == 3 and not s.kv.holds(s.waiting[2])
    assert s.preemptions == 1


def test_a_lone_runner_that_cannot_grow_waits_rather_than_fail() -> None:
    s = Scheduler("fifo", max_batch=8)
    s.kv = BlockManager(1 + 2)
    s.add(kv_req(1, 32))
    kv_step(s)
    plan = s.schedule()  # it needs a third block; there are two in all
    assert plan.running == () and plan.preempted == (1,) and 1 in s.waiting


def test_removing_a_running_request_releases_its_blocks() -> None:
    s = Scheduler("fifo", max_batch=8)
    s.kv = BlockManager(1 + 5)
    s.add(kv_req(1, 40))
    s.schedule()
    s.remove(1)
    assert s.kv.statistics()["kv_blocks_held"] == 0 and not s.has_work()
