"""Fault tolerance: with a fraction of driver steps, tool calls and memory store writes
failing or hanging (llmos.testing.FaultInjector), the kernel never crashes, every syscall
gets an answer (a result or a typed SyscallError), every process that no fault hit
finishes as if nothing happened, and nothing leaks: asyncio tasks, the scheduler's queue
and batch, the generation service's jobs, the engine's KV rows, open file descriptors.

The parts are real (the FakeDriver or a transformers driver, the toolbox with a Python tool,
a store); only the injector stands between them and the kernel. The first tests pin down
the bound each part gets (a hung step, a hung or broken store, a failed batch's KV rows);
the last ones put 100 processes (12 on SmolLM2) through a tenth of their calls struck."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psutil
import pytest

import llmos
from llmos.kernel import Kernel
from llmos.kernel.errors import MemoryUnavailable, ModelError, SyscallError
from llmos.kernel.memory import MemoryStore
from llmos.kernel.model import ModelDriver
from llmos.kernel.process import ProcState
from llmos.testing import (FakeDriver, FaultInjector, FaultRates, InMemoryStore, caught, result, spawn_and_wait,
                           tiny_driver, until)

TEN_PERCENT = FaultRates(fail=0.07, hang=0.03)  # a tenth of each kind of call is struck
TOOL_TIMEOUT_S = 0.5  # the bound on a hung tool call (the caller's timeout)
AGENT_CALLS = {"chat", "call_tool", "remember", "forget"}  # the syscalls an agent makes


@llmos.tool(read_only=True, sends_data=False, trusted_output=True)  # a calculator: no egress, no untrusted text
async def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@dataclass
class Tally:
    """What one process's syscalls answered: results, typed errors by class, anything else."""

    results: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    untyped: list[str] = field(default_factory=list)  # must stay empty: an answer that is no SyscallError

    @property
    def calls(self) -> int:
        return self.results + sum(self.errors.values()) + len(self.untyped)

    async def answer(self, call: Awaitable[Any]) -> Any:
        """Await a syscall and count its answer; None for an error."""
        try:
            value = await call
        except SyscallError as exc:
            self.errors[type(exc).__name__] += 1
            return None
        except Exception as exc:  # the invariant broken: counted, so that the test says which
            self.untyped.append(f"{type(exc).__name__}: {exc}")
            return None
        self.results += 1
        return value


async def agent(sys: Any, turns: int, max_tokens: int, chats: bool = True) -> Tally:
    """Chat (unless `chats` is False), call a tool and remember, `turns` times; then forget the
    first note kept. Every error is caught and counted: a process a fault hit goes on to its end."""
    tally = Tally()
    notes = []
    for turn in range(turns):
        if chats:
            await tally.answer(sys.chat(f"How are you, turn {turn}?", max_tokens=max_tokens))
        await tally.answer(sys.call_tool("add", a=turn, b=sys.pid, timeout=TOOL_TIMEOUT_S))
        note = await tally.answer(sys.remember(f"Turn {turn} of {sys.name} went well."))
        if note is not None:
            notes.append(note)
    if notes:
        await tally.answer(sys.forget(notes[0]))
    return tally


# -- measuring ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resources:
    """What the test's OS process holds that a leak would grow."""

    tasks: int  # asyncio tasks
    fds: int  # open file descriptors


def resources() -> Resources:
    return Resources(tasks=len(asyncio.all_tasks()), fds=psutil.Process().num_fds())


async def settled(before: Resources, within: float = 10.0) -> Resources:
    """Resources once they are back to `before`, or as they are after `within` seconds: some
    are released a moment after their owner closes (chromadb closes its SQLite connections
    in the background), and a leak is what is never released."""
    with anyio.move_on_after(within):
        while resources() != before:
            await anyio.sleep(0.02)
    return resources()


async def files_closed(folder: Path, within: float = 10.0) -> None:
    """Wait until no file under `folder` is open (a store closed, its connections gone)."""
    def open_there() -> list[str]:
        return [f.path for f in psutil.Process().open_files() if f.path.startswith(str(folder))]

    with anyio.move_on_after(within):
        while open_there():
            await anyio.sleep(0.02)
    assert open_there() == []


def kernel_residue(kernel: Kernel) -> dict[str, int]:
    """What the kernel still holds for processes and generations: all zero once they are gone."""
    scheduler, generation = kernel.scheduler.statistics(), kernel.generation
    assert generation is not None
    return {"processes": len(kernel.ps(include_ended=True)), "waiting": scheduler.waiting,
            "running": scheduler.running, "suspended": scheduler.suspended_owners, "jobs": len(generation.jobs),
            "topics": len(kernel.topics)}


@asynccontextmanager
async def faulty_kernel(driver: ModelDriver, store: MemoryStore, injector: FaultInjector, *, step_timeout_s: float,
                        store_timeout_s: float) -> AsyncIterator[Kernel]:
    """A kernel over `driver`, the toolbox (with `add`) and `store`, each behind the injector;
    hangs bounded by the given timeouts. The store stays the caller's to close."""
    async with llmos.boot(injector.driver(driver), memory=injector.store(store), tools=[add], mcp_servers=None,
                          embedder=None, durable=None) as kernel:
        assert kernel.generation is not None and kernel.tools is not None
        kernel.tools = injector.tools(kernel.tools)
        kernel.generation.step_timeout_s = step_timeout_s
        kernel.memory.store_timeout_s = store_timeout_s  # type: ignore[union-attr]
        yield kernel


@dataclass(frozen=True)
class Run:
    tallies: dict[int, Tally]  # pid -> what its syscalls answered
    states: dict[int, ProcState]
    traced: Counter[str]  # the kernel's trace of the agents' calls, by outcome ("ok" or an errno)


async def run_agents(kernel: Kernel, n: int, turns: int, max_tokens: int, timeout: float,
                     chatting: int | None = None) -> Run:
    """Spawn `n` agents at once (the first `chatting` of them chat; all by default) and wait
    for every one, each wait bounded by `timeout`."""
    chatting = n if chatting is None else chatting
    pids = [(await kernel.spawn(agent, turns, max_tokens, i < chatting, name=f"agent-{i}",
                                caps={"model.generate", "tool.add", "memory"})).pid for i in range(n)]
    statuses = {pid: await kernel.wait(pid, timeout=timeout) for pid in pids}
    traced = Counter(e.outcome for e in kernel.trace if e.pid in statuses and e.call in AGENT_CALLS)
    return Run(tallies={pid: s.result for pid, s in statuses.items() if isinstance(s.result, Tally)},
               states={pid: s.state for pid, s in statuses.items()}, traced=traced)


def check_invariants(run: Run, injector: FaultInjector, n: int) -> dict[str, Any]:
    """Every syscall answered, typed; every process ended; those no fault hit ended clean.
    Returns the run's figures."""
    assert len(run.states) == n and set(run.states.values()) == {ProcState.EXITED}, \
        Counter(s.name for s in run.states.values())
    assert len(run.tallies) == n
    untyped = [u for tally in run.tallies.values() for u in tally.untyped]
    assert untyped == [], untyped
    calls = sum(t.calls for t in run.tallies.values())
    errors = sum((t.errors for t in run.tallies.values()), Counter())
    # The kernel traced exactly the calls the agents saw answered: none is still in flight.
    assert sum(run.traced.values()) == calls and run.traced["ok"] == calls - sum(errors.values()), run.traced
    hit = injector.hit_pids()
    clean = [pid for pid in run.tallies if pid not in hit]
    assert clean, "every process was hit: the run says nothing about the others"
    assert all(run.tallies[pid].errors == Counter() for pid in clean), \
        {pid: run.tallies[pid].errors for pid in clean if run.tallies[pid].errors}
    return {"syscalls": calls, "answered": run.traced["ok"] + sum(errors.values()), "errors": dict(errors),
            "processes hit": len(hit & run.tallies.keys()), "processes clean": len(clean)}


async def kernel_still_answers(kernel: Kernel, injector: FaultInjector) -> Tally:
    """With the injector off, a new agent gets a result from every call."""
    injector.enabled = False
    try:
        status = await kernel.wait((await kernel.spawn(agent, 1, 4, name="after")).pid, timeout=60)
    finally:
        injector.enabled = True
    assert status.state is ProcState.EXITED, status.reason
    return status.result


def figures(injector: FaultInjector, run_figures: dict[str, Any], before: Resources, after: Resources) -> str:
    struck = Counter(f"{f.kind} {f.action}" for f in injector.faults)
    return (f"calls seen {dict(injector.calls)}; faults injected {len(injector.faults)} {dict(struck)}; "
            f"{run_figures}; resources before {before}, after {after}")


# -- the bound each part gets ---------------------------------------------------------------------------
async def generate(sys: Any, max_tokens: int = 8) -> Any:
    """The reply as ("returned", reply), or the SyscallError."""
    return await caught(sys.generate("the cat sat on the mat", max_tokens=max_tokens))


async def test_a_hung_step_fails_its_batch_within_the_step_timeout_and_the_model_goes_on() -> None:
    injector = FaultInjector(steps=FaultRates(hang=1.0))
    async with llmos.boot(injector.driver(FakeDriver()), memory=None, embedder=None, durable=None,
                          mcp_servers=None) as kernel:
        assert kernel.generation is not None
        kernel.generation.step_timeout_s = 0.2
        with anyio.fail_after(5):
            error = result(await spawn_and_wait(kernel, generate))
        injector.enabled = False
        returned, reply = result(await spawn_and_wait(kernel, generate))
    assert type(error) is ModelError and "did not finish a step within 0.2 s" in str(error)
    assert returned == "returned" and reply.text == "echo: the cat sat on the mat"
    assert injector.injected("step", "hang") >= 1


async def test_the_engine_lets_go_of_a_failed_batch_at_once() -> None:
    # The step fails after the engine did its work, so the engine's own release of the
    # finished is skipped; with nothing else to run, the kernel must still free the KV rows.
    injector = FaultInjector(steps=FaultRates(fail=1.0))
    driver = tiny_driver()
    async with llmos.boot(injector.driver(driver), memory=None, embedder=None, durable=None,
                          mcp_servers=None) as kernel:
        error = result(await spawn_and_wait(kernel, generate, timeout=30))
        await until(lambda: not driver.engine.seqs)
        injector.enabled = False
        returned, reply = result(await spawn_and_wait(kernel, generate, timeout=30))
        await until(lambda: not driver.engine.seqs)
    assert type(error) is ModelError and "injected fault" in str(error)
    assert returned == "returned" and reply.completion_tokens >= 1


async def test_the_engine_lets_go_of_a_killed_process_generation() -> None:
    driver = tiny_driver()

    async def long(sys: Any) -> Any:
        return await sys.generate("the cat", max_tokens=400)

    async with llmos.boot(driver, memory=None, embedder=None, durable=None, mcp_servers=None) as kernel:
        info = await kernel.spawn(long)
        await until(lambda: any(len(s.job.token_ids) >= 3 for s in driver.engine.seqs.values()), timeout=30)
        kernel.kill(info.pid)
        await kernel.wait(info.pid, timeout=10)
        await until(lambda: not driver.engine.seqs)


async def test_the_engine_lets_go_of_a_stream_left_between_steps() -> None:
    # The reader runs as soon as its first piece is delivered, between two steps, and leaves
    # the stream: its job ends while the engine holds it, and no step follows to release it.
    driver = tiny_driver()

    async def reader(sys: Any) -> str:
        stream = await sys.generate("the cat", max_tokens=400, stream=True)
        async for piece in stream:
            await stream.aclose()
            return piece
        return ""

    async with llmos.boot(driver, memory=None, embedder=None, durable=None, mcp_servers=None) as kernel:
        first = result(await spawn_and_wait(kernel, reader, timeout=30))
        await until(lambda: not driver.engine.seqs)
    assert first


async def test_a_hung_store_write_fails_within_the_store_timeout_and_memory_goes_on() -> None:
    injector = FaultInjector(store=FaultRates(hang=1.0))

    async def rememberer(sys: Any) -> tuple[Any, Any]:
        hung = await caught(sys.remember("a note"))
        injector.enabled = False
        return hung, await sys.remember("another note")

    async with llmos.boot(FakeDriver(), memory=injector.store(InMemoryStore()), embedder=None, durable=None,
                          mcp_servers=None) as kernel:
        kernel.memory.store_timeout_s = 0.2  # type: ignore[union-attr]
        with anyio.fail_after(5):
            hung, kept = result(await spawn_and_wait(kernel, rememberer))
    assert type(hung) is MemoryUnavailable and "did not store items within 0.2 s" in str(hung)
    assert isinstance(kept, str)


async def test_a_store_failure_is_a_typed_error() -> None:
    injector = FaultInjector(store=FaultRates(fail=1.0))

    async def rememberer(sys: Any) -> Any:
        return await caught(sys.remember("a note"))

    async with llmos.boot(FakeDriver(), memory=injector.store(InMemoryStore()), embedder=None, durable=None,
                          mcp_servers=None) as kernel:
        error = result(await spawn_and_wait(kernel, rememberer))
    assert type(error) is MemoryUnavailable and "InjectedFault" in str(error)


# -- many processes, a tenth of their calls struck --------------------------------------------------------
async def test_a_hundred_processes_with_a_tenth_of_their_calls_struck() -> None:
    # Seed 5 strikes steps 4 and 23 (fail) and 8 and 22 (hang), among others: every kind
    # of fault comes early in the run, whatever the timing.
    injector = FaultInjector(seed=5, steps=TEN_PERCENT, tools=TEN_PERCENT, store=TEN_PERCENT)
    driver, store = FakeDriver(lambda prompt: "all is well", max_batch=16), InMemoryStore()
    before = resources()
    with anyio.fail_after(60):
        async with faulty_kernel(driver, store, injector, step_timeout_s=0.5, store_timeout_s=0.5) as kernel:
            booted = resources()
            run = await run_agents(kernel, 100, turns=2, max_tokens=8, timeout=45)
            run_figures = check_invariants(run, injector, 100)
            assert kernel_residue(kernel) == dict.fromkeys(kernel_residue(kernel), 0)
            assert resources().tasks == booted.tasks  # every process's task and every helper ended
            after = await kernel_still_answers(kernel, injector)
            assert after.results == after.calls == 4
    assert await settled(before) == before
    assert {(f.kind, f.action) for f in injector.faults} == {
        (kind, action) for kind in ("step", "tool", "store") for action in ("fail", "hang")}
    print(f"\n{figures(injector, run_figures, before, resources())}")


@pytest.mark.model
async def test_a_dozen_processes_on_smollm2_with_a_tenth_of_engine_steps_struck(smollm2: llmos.Model,
                                                                                 tmp_path: Path) -> None:
    from llmos.drivers.embeddings import MINILM
    from llmos.memory.store import open_store

    driver = smollm2.driver
    engine = driver.engine
    # Loaded once per interpreter, before measuring: the embedder and chromadb's modules.
    warm = await anyio.to_thread.run_sync(open_store, tmp_path / "warm-up", MINILM)
    await warm.add("warm-up", ["warm up"], [{"kind": "warm-up"}], ["warm-up"])
    await warm.aclose()
    await files_closed(tmp_path / "warm-up")
    # Seed 13 strikes no step before the 15th (fail) and the 22nd (hang): the agents' first
    # chats are answered, and a later one fails or hangs for each of them.
    injector = FaultInjector(seed=13, steps=TEN_PERCENT, tools=TEN_PERCENT, store=TEN_PERCENT)
    before = resources()
    store = await anyio.to_thread.run_sync(open_store, tmp_path / "store", MINILM)
    try:
        with anyio.fail_after(240):
            async with faulty_kernel(driver, store, injector, step_timeout_s=2.0, store_timeout_s=10.0) as kernel:
                booted = resources()
                # Every chatting agent shares the engine's steps, so a struck step hits them all:
                # the four that do not chat are the ones a fault may miss.
                run = await run_agents(kernel, 12, turns=3, max_tokens=8, timeout=180, chatting=8)
                run_figures = check_invariants(run, injector, 12)
                await until(lambda: not engine.seqs)  # every KV row released
                assert kernel_residue(kernel) == dict.fromkeys(kernel_residue(kernel), 0)
                assert resources().tasks == booted.tasks
                after = await kernel_still_answers(kernel, injector)
                assert after.results == after.calls == 4
                await until(lambda: not engine.seqs)
    finally:
        await store.aclose()
    assert await settled(before) == before
    assert injector.injected("step") >= 1 and engine.statistics()["sequences"] == 0
    print(f"\n{figures(injector, run_figures, before, resources())}")
