"""The pure Scheduler: no model, no event loop, only add / schedule / update_from_output."""

from __future__ import annotations

import pytest

from llmos.kernel.errors import ConfigError
from llmos.kernel.scheduler import POLICIES, SchedRequest, Scheduler, SchedulerOutput, StepOutput


def req(id: int, pid: int | None = None, priority: int = 0, max_tokens: int = 10) -> SchedRequest:
    return SchedRequest(id=id, pid=id if pid is None else pid, priority=priority, max_tokens=max_tokens)


def make(policy: str = "fifo", *requests: SchedRequest, max_batch: int = 16, quantum: int = 32) -> Scheduler:
    sched = Scheduler(policy, max_batch=max_batch, quantum=quantum)
    for r in requests:
        sched.add(r)
    return sched


def finish_all(sched: Scheduler, plan: SchedulerOutput) -> None:
    """Report that every request in the batch decoded everything it had left."""
    tokens = {i: sched.running[i].remaining for i in plan.batch}
    sched.update_from_output(StepOutput(tokens=tokens, finished=frozenset(plan.batch)))


def run_steps(sched: Scheduler, plan: SchedulerOutput) -> None:
    """Report that every request in the batch decoded `max_steps` tokens (or what it had left)."""
    tokens = {i: min(plan.max_steps, sched.running[i].remaining) for i in plan.batch}
    done = frozenset(i for i in plan.batch if tokens[i] == sched.running[i].remaining)
    sched.update_from_output(StepOutput(tokens=tokens, finished=done))


# -- construction ------------------------------------------------------------------------------
def test_unknown_policy_is_a_config_error_listing_the_names() -> None:
    with pytest.raises(ConfigError) as info:
        Scheduler("lottery")
    message = str(info.value)
    assert "'lottery'" in message
    for name in ("fifo", "priority", "rr", "round-robin"):
        assert name in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("max_batch", "quantum"), [(0, 32), (-1, 32), (4, 0), (4, -3)])
def test_batch_and_quantum_must_be_positive(max_batch: int, quantum: int) -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        Scheduler("fifo", max_batch=max_batch, quantum=quantum)


@pytest.mark.parametrize(("name", "expected", "preempts"),
                         [("fifo", "fifo", False), ("priority", "priority", False), ("rr", "rr", True),
                          ("round-robin", "rr", True)])
def test_policy_names(name: str, expected: str, preempts: bool) -> None:
    sched = Scheduler(name)
    assert sched.policy.name == expected
    assert sched.policy.preempts is preempts
    assert sched.statistics() == {"policy": expected, "waiting": 0, "running": 0, "suspended_owners": 0}
    assert set(POLICIES) == {"fifo", "priority", "rr", "round-robin"}


def test_default_policy_is_fifo() -> None:
    assert Scheduler().policy.name == "fifo"


def test_adding_a_request_twice_is_refused() -> None:
    sched = make("fifo", req(1))
    with pytest.raises(ValueError, match="already scheduled"):
        sched.add(req(1))
    sched.schedule()  # now running: still refused
    with pytest.raises(ValueError, match="already scheduled"):
        sched.add(req(1))


def test_empty_scheduler_has_no_work_and_an_empty_batch() -> None:
    sched = make("fifo")
    assert not sched.has_work()
    plan = sched.schedule()
    assert plan == SchedulerOutput(batch=(), max_steps=0)


# -- fifo ------------------------------------------------------------------------------------
def test_fifo_serves_in_arrival_order_up_to_max_batch() -> None:
    sched = make("fifo", req(5), req(3), req(9), req(1), max_batch=2)
    plan = sched.schedule()
    assert plan.batch == (5, 3)
    assert set(sched.running) == {5, 3}
    assert set(sched.waiting) == {9, 1}
    finish_all(sched, plan)
    assert sched.schedule().batch == (9, 1)


def test_fifo_ignores_priority() -> None:
    sched = make("fifo", req(1, priority=10), req(2, priority=-10), max_batch=1)
    assert sched.schedule().batch == (1,)


def test_fifo_runs_the_batch_to_completion_without_a_quantum() -> None:
    sched = make("fifo", req(1, max_tokens=100), req(2, max_tokens=7), quantum=4)
    plan = sched.schedule()
    assert plan.max_steps == 100  # the longest remaining request; fifo never preempts


def test_max_batch_limits_every_batch() -> None:
    sched = make("fifo", *[req(i) for i in range(10)], max_batch=3)
    seen: list[int] = []
    while sched.has_work():
        plan = sched.schedule()
        assert 1 <= len(plan.batch) <= 3
        seen += plan.batch
        finish_all(sched, plan)
    assert seen == list(range(10))


def test_schedule_does_not_overfill_a_running_batch() -> None:
    sched = make("fifo", req(1), req(2), max_batch=2)
    sched.schedule()
    sched.add(req(3))
    plan = sched.schedule()  # nothing finished: no free slot for 3
    assert plan.batch == (1, 2)
    assert set(sched.waiting) == {3}


# -- priority ------------------------------------------------------------------------------
def test_priority_serves_lower_nice_first_then_arrival() -> None:
    sched = make("priority", req(1, priority=5), req(2, priority=-3), req(3, priority=5), req(4, priority=0),
                 max_batch=1)
    order = []
    while sched.has_work():
        plan = sched.schedule()
        order += plan.batch
        finish_all(sched, plan)
    assert order == [2, 4, 1, 3]


def test_set_priority_reorders_waiting_requests_of_that_owner() -> None:
    sched = make("priority", req(1, pid=10, priority=0), req(2, pid=20, priority=0), req(3, pid=20, priority=0),
                 max_batch=1)
    sched.set_priority(20, -5)
    assert sched.waiting[2].priority == -5 and sched.waiting[3].priority == -5
    assert sched.waiting[1].priority == 0
    order = []
    while sched.has_work():
        plan = sched.schedule()
        order += plan.batch
        finish_all(sched, plan)
    assert order == [2, 3, 1]


def test_set_priority_reaches_running_requests() -> None:
    sched = make("priority", req(1, pid=10))
    sched.schedule()
    sched.set_priority(10, 7)
    assert sched.running[1].priority == 7


# -- round-robin ---------------------------------------------------------------------------
def test_rr_max_steps_is_capped_by_the_quantum() -> None:
    sched = make("rr", req(1, max_tokens=100), req(2, max_tokens=3), quantum=4)
    assert sched.schedule().max_steps == 4


def test_rr_max_steps_is_the_longest_remaining_when_below_the_quantum() -> None:
    sched = make("rr", req(1, max_tokens=2), req(2, max_tokens=3), quantum=8)
    assert sched.schedule().max_steps == 3


def test_rr_unfinished_requests_go_back_in_line() -> None:
    sched = make("rr", req(1, max_tokens=10), quantum=4)
    plan = sched.schedule()
    run_steps(sched, plan)
    assert 1 in sched.waiting and not sched.running
    assert sched.waiting[1].done_tokens == 4
    assert sched.waiting[1].remaining == 6
    assert sched.has_work()


def test_rr_least_recently_served_goes_first() -> None:
    sched = make("rr", req(1, max_tokens=12), req(2, max_tokens=12), req(3, max_tokens=12), max_batch=2, quantum=4)
    batches = []
    for _ in range(4):
        plan = sched.schedule()
        batches.append(plan.batch)
        run_steps(sched, plan)
    # 1,2 first by arrival; then 3 (never served) before 1 (served in round 0, arrived before 2);
    # then 2 (last served in round 0) before 1 (round 1, arrived first) before 3 (round 1);
    # then 3 (round 1) before 2 (round 2, arrived before 1).
    assert batches == [(1, 2), (3, 1), (2, 1), (3, 2)]


def test_rr_every_request_finishes_with_its_exact_token_count() -> None:
    sizes = {1: 5, 2: 9, 3: 2}
    sched = make("rr", *[req(i, max_tokens=n) for i, n in sizes.items()], max_batch=2, quantum=3)
    decoded = dict.fromkeys(sizes, 0)
    finished_order = []
    rounds = 0
    while sched.has_work():
        rounds += 1
        assert rounds < 20
        plan = sched.schedule()
        before = {i: sched.running[i].remaining for i in plan.batch}
        for i in plan.batch:
            decoded[i] += min(plan.max_steps, before[i])
        run_steps(sched, plan)
        finished_order += [i for i in plan.batch if i not in sched.waiting]
    assert decoded == sizes
    assert finished_order == [3, 1, 2]
    assert not sched.waiting and not sched.running


def test_non_preemptive_policies_also_requeue_unfinished_requests() -> None:
    # A static batch ends as a whole; a request the driver did not finish waits for its next turn.
    sched = make("fifo", req(1, max_tokens=10))
    plan = sched.schedule()
    sched.update_from_output(StepOutput(tokens={1: 3}))
    assert plan.batch == (1,)
    assert sched.waiting[1].done_tokens == 3
    assert sched.schedule().max_steps == 7


# -- suspend / resume ---------------------------------------------------------------------
def test_suspended_owner_is_never_picked() -> None:
    sched = make("fifo", req(1, pid=10), req(2, pid=20), req(3, pid=10))
    sched.suspend(10)
    assert sched.statistics()["suspended_owners"] == 1
    plan = sched.schedule()
    assert plan.batch == (2,)
    finish_all(sched, plan)
    assert not sched.has_work()  # only the suspended owner's requests wait
    assert sched.schedule().batch == ()
    assert set(sched.waiting) == {1, 3}
    sched.resume(10)
    assert sched.has_work()
    assert sched.schedule().batch == (1, 3)


def test_resume_of_a_never_suspended_owner_is_harmless() -> None:
    sched = make("fifo", req(1))
    sched.resume(1)
    assert sched.schedule().batch == (1,)


# -- remove ---------------------------------------------------------------------------------
def test_remove_forgets_waiting_and_running_requests() -> None:
    sched = make("fifo", req(1), req(2), max_batch=1)
    sched.schedule()
    sched.remove(1)  # running
    sched.remove(2)  # waiting
    sched.remove(99)  # unknown: no error
    assert not sched.waiting and not sched.running
    assert not sched.has_work()


def test_remove_owner_returns_the_ids_it_removed() -> None:
    sched = make("fifo", req(1, pid=7), req(2, pid=8), req(3, pid=7), max_batch=1)
    sched.schedule()  # 1 runs
    removed = sched.remove_owner(7)
    assert sorted(removed) == [1, 3]
    assert set(sched.waiting) == {2} and not sched.running
    assert sched.remove_owner(7) == []
    assert sched.schedule().batch == (2,)


# -- update_from_output -----------------------------------------------------------------------
def test_update_from_output_accounts_tokens_and_drops_finished() -> None:
    sched = make("fifo", req(1, max_tokens=10), req(2, max_tokens=10), req(3, max_tokens=10))
    sched.schedule()
    sched.update_from_output(StepOutput(tokens={1: 10, 2: 4, 3: 6, 42: 5}, finished=frozenset({1, 42})))
    assert not sched.running
    assert 1 not in sched.waiting
    assert sched.waiting[2].done_tokens == 4
    assert sched.waiting[3].done_tokens == 6
    # tokens accumulate across steps
    sched.schedule()
    sched.update_from_output(StepOutput(tokens={2: 3}))
    assert sched.waiting[2].done_tokens == 7 and sched.waiting[2].remaining == 3


def test_update_ignores_tokens_of_requests_not_running() -> None:
    sched = make("fifo", req(1), req(2), max_batch=1)
    sched.schedule()  # only 1 runs
    sched.update_from_output(StepOutput(tokens={2: 5}))
    assert sched.waiting[2].done_tokens == 0


def test_a_finished_request_leaves_even_with_tokens_left() -> None:
    # A stop string ends a reply before max_tokens: the request is done.
    sched = make("fifo", req(1, max_tokens=50))
    sched.schedule()
    sched.update_from_output(StepOutput(tokens={1: 2}, finished=frozenset({1})))
    assert not sched.waiting and not sched.running and not sched.has_work()


def test_statistics_count_waiting_and_running() -> None:
    sched = make("rr", req(1), req(2), req(3), max_batch=2)
    sched.suspend(3)
    sched.schedule()
    assert sched.statistics() == {"policy": "rr", "waiting": 1, "running": 2, "suspended_owners": 1}
