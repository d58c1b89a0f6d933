"""llmos.testing's fault injector and in-memory store: the harness the fault-tolerance tests
(tests/kernel/test_faults.py) stand on. Its parts are wrapped for real: the FakeDriver, a
toolbox with a Python tool, the in-memory store."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from llmos.drivers.tools import ToolBox, registration
from llmos.kernel.errors import ToolFailed
from llmos.kernel.model import GenerationJob, SamplingParams
from llmos.kernel.tools import ToolContext
from llmos.testing import FakeDriver, Fault, FaultInjector, FaultRates, InjectedFault, InMemoryStore

KEYS = [f"pid {pid} call {n}" for pid in range(200) for n in range(50)]  # 10,000 calls' keys


def double(x: int) -> int:
    """Double a number."""
    return 2 * x


def job(job_id: int, pid: int) -> GenerationJob:
    made = GenerationJob(id=job_id, pid=pid, sampling=SamplingParams(max_tokens=8), prompt="hello")
    FakeDriver().prepare(made)
    return made


async def never_returns(call: Any, within: float = 0.05) -> bool:
    """Whether `call` is still in flight after `within` seconds (it is then cancelled)."""
    with anyio.move_on_after(within) as scope:
        await call
    return scope.cancelled_caught


# -- deciding ------------------------------------------------------------------------------------------
def test_rates_are_fractions_that_add_up_to_at_most_one() -> None:
    for fail, hang in ((-0.1, 0.0), (0.0, -0.1), (0.7, 0.4)):
        with pytest.raises(ValueError, match="fault rates"):
            FaultRates(fail=fail, hang=hang)
    assert FaultRates(fail=0.6, hang=0.4).hang == 0.4


def test_decisions_depend_on_seed_kind_and_key_only() -> None:
    rates = FaultRates(fail=0.07, hang=0.03)
    first, again = (FaultInjector(seed=3, tools=rates, store=rates) for _ in range(2))
    decided = [first.decide("tool", key) for key in KEYS]
    assert decided == [again.decide("tool", key) for key in reversed(KEYS)][::-1]  # order does not matter
    assert decided != [FaultInjector(seed=4, tools=rates).decide("tool", key) for key in KEYS]
    assert decided != [first.decide("store", key) for key in KEYS]


def test_the_fractions_struck_are_the_rates() -> None:
    injector = FaultInjector(seed=1, tools=FaultRates(fail=0.07, hang=0.03))
    struck = Counter(injector.decide("tool", key) for key in KEYS)
    assert struck["fail"] / len(KEYS) == pytest.approx(0.07, abs=0.01)
    assert struck["hang"] / len(KEYS) == pytest.approx(0.03, abs=0.01)
    assert FaultInjector(seed=1).decide("tool", KEYS[0]) is None  # no rates: nothing is struck


def test_strike_keys_each_call_by_its_caller_and_count_and_records_the_fault() -> None:
    injector = FaultInjector(seed=2, tools=FaultRates(fail=1.0))
    faults = [injector.strike("tool", "pid 7", (7,)) for _ in range(2)]
    assert faults == [Fault("tool", "fail", "pid 7 call 0", (7,)), Fault("tool", "fail", "pid 7 call 1", (7,))]
    assert injector.faults == faults and injector.hit_pids() == {7}
    assert injector.injected("tool") == injector.injected("tool", "fail") == 2 and injector.injected("step") == 0
    injector.enabled = False
    assert injector.strike("tool", "pid 8", (8,)) is None and injector.calls["tool"] == 3


# -- the wrapped parts -----------------------------------------------------------------------------------
async def test_a_struck_step_fails_after_the_driver_did_its_work() -> None:
    injector = FaultInjector(steps=FaultRates(fail=1.0))
    fake = FakeDriver(lambda prompt: "one two three")
    driver, running = injector.driver(fake), [job(1, pid=5), job(2, pid=9)]
    with pytest.raises(InjectedFault, match="mid-step"):
        await driver.step(running, lambda pieces: None)
    assert [len(j.token_ids) for j in running] == [1, 1]  # the FakeDriver advanced them first
    assert injector.faults == [Fault("step", "fail", "driver call 0", (5, 9))]
    assert (driver.name, driver.context_length, driver.max_batch) == (fake.name, fake.context_length, fake.max_batch)
    assert driver.batches is fake.batches  # the wrapped driver's own attributes show through


async def test_a_hung_step_never_reaches_the_driver() -> None:
    injector = FaultInjector(steps=FaultRates(hang=1.0))
    fake = FakeDriver()
    assert await never_returns(injector.driver(fake).step([job(1, pid=5)], lambda pieces: None))
    assert fake.batches == [] and injector.injected("step", "hang") == 1


async def test_an_untouched_step_is_the_driver_own() -> None:
    injector = FaultInjector(steps=FaultRates(fail=1.0))
    injector.enabled = False
    pieces: list[tuple[GenerationJob, str]] = []
    await injector.driver(FakeDriver(lambda prompt: "one two")).step([job(1, pid=5)], pieces.extend)
    assert [piece for _, piece in pieces] == ["one "] and injector.faults == []


async def test_tool_calls_fail_typed_hang_or_go_through() -> None:
    toolbox = ToolBox([registration(double)])
    context = ToolContext(pid=4, process="agent")
    failing = FaultInjector(tools=FaultRates(fail=1.0)).tools(toolbox)
    with pytest.raises(ToolFailed, match="injected fault"):
        await failing.call("double", {"x": 2}, context)
    assert await never_returns(FaultInjector(tools=FaultRates(hang=1.0)).tools(toolbox).call("double", {"x": 2},
                                                                                              context))
    passing = FaultInjector().tools(toolbox)
    assert await passing.call("double", {"x": 2}, context) == 4
    assert passing.specs() == toolbox.specs() and passing.get("double") == toolbox.get("double")
    assert failing.injector.hit_pids() == {4}


async def test_store_writes_fail_or_hang_and_reads_go_through() -> None:
    store = InMemoryStore()
    await store.add("notes", ["kept"], [{}], ["a"])
    failing = FaultInjector(store=FaultRates(fail=1.0))
    with pytest.raises(InjectedFault):
        await failing.store(store).add("notes", ["lost"], [{}], ["b"])
    with pytest.raises(InjectedFault):
        await failing.store(store).delete("notes", ["a"])
    assert [item.id for item in await failing.store(store).get("notes", ["a", "b"])] == ["a"]  # reads: untouched
    # Outside a process, a write is keyed by its namespace and hits no process.
    assert failing.faults[0] == Fault("store", "fail", "namespace notes call 0", ())
    assert await never_returns(FaultInjector(store=FaultRates(hang=1.0)).store(store).add("notes", ["x"], [{}], ["c"]))
    assert await store.count("notes") == 1


# -- the in-memory store -------------------------------------------------------------------------------
async def test_the_in_memory_store_keeps_ranks_filters_and_forgets() -> None:
    store = InMemoryStore()
    await store.add("me", ["The sister lives in Lisbon.", "Tea, not coffee."], [{"topic": "family"}, {"topic": "food"}],
                    ["s", "t"])
    await store.add("other", ["Lisbon is sunny."], [{}], ["o"])
    found = await store.query("me", "Where does the sister live?", k=2)
    assert [item.id for item in found] == ["s", "t"] and found[0].score > found[1].score
    assert [item.id for item in await store.query("me", "anything", k=5, where={"topic": "food"})] == ["t"]
    await store.delete("me", ["s"])
    assert await store.count("me") == 1 and await store.get("me", ["s"]) == []
    assert [item.namespace for item in await store.get("other", ["o"])] == ["other"]
    await store.aclose()
    assert store.closed
