"""The event-loop watchdog (kernel/watchdog.py): loop lag, naming the process that blocks the
loop, reporting it (ProcessInfo, `stats`, the trace, `top`), and stopping a process that holds
the loop past the limit without ever raising in kernel code.

Every loop here is bounded in count and in time; the whole file runs in about 11 s."""

from __future__ import annotations

import gc
import io
import time
from collections import Counter
from typing import Any

import anyio
import pytest
from rich.console import Console

import llmos
from llmos.apps.shell import views
from llmos.kernel import params
from llmos.kernel.process import Process, Quotas
from llmos.kernel.stats import TraceEvent
from llmos.kernel.watchdog import BLOCKED_CALL, LoopBlocked, LoopWatchdog, Schedstat, Sighting, Stall
from llmos.syscalls import ProcState, Sys
from llmos.testing import LAG_TICK_S, lag_ticker, process_info, until

TICKERS = 50
TICK_S = LAG_TICK_S
BLOCK_S = 1.0  # how long the blocker holds the loop
LAG_P99_LIMIT_S = 0.1


def boot() -> Any:
    return llmos.boot(None, memory=None, durable=None, mcp_servers=None, embedder=None)


def percentile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def blocked_events(kernel: llmos.Kernel, pid: int | None = None) -> list[TraceEvent]:
    return [e for e in kernel.trace if e.call == BLOCKED_CALL and (pid is None or e.pid == pid)]


ticker = lag_ticker


async def blocker(sys: Sys, how: str, after_s: float) -> tuple[float, float]:
    """Hold the loop for BLOCK_S (in Python, or in a C call), after `after_s`; the window."""
    await sys.sleep(after_s)
    began = time.perf_counter()
    if how == "sleep":
        time.sleep(BLOCK_S)
    else:
        while time.perf_counter() - began < BLOCK_S:
            pass
    return began, time.perf_counter()


def spin(seconds: float) -> str:
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        pass
    return "spun"


async def spinner(sys: Sys, seconds: float) -> str:
    await sys.sleep(0.05)
    return spin(seconds)  # bounded: if the watchdog failed to stop it, it returns


# -- naming the blocker ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["busy", "sleep"])
async def test_the_process_that_blocks_the_loop_is_named_and_the_others_keep_their_lag(how: str) -> None:
    # The lag is the machine's as much as the kernel's: on a loaded, shared machine the OS
    # alone can hold the loop for tens of ms. So the best of three runs (each names the blocker).
    p99s = []
    for _ in range(3):
        lags = await blocked_by_one_of_many(how)
        p99s.append(percentile(lags, 0.99))
        if p99s[-1] < LAG_P99_LIMIT_S:
            break
    print(f"{how}: the others' lag p99 outside the block, per run: {[f'{p * 1000:.1f} ms' for p in p99s]}")
    assert min(p99s) < LAG_P99_LIMIT_S


async def blocked_by_one_of_many(how: str) -> list[float]:
    """TICKERS processes awaiting briefly, one holding the loop for BLOCK_S: check that it is
    named everywhere, and return the others' lags outside the block."""
    gc.collect()  # the earlier tests' garbage is not this kernel's lag (a full collection here takes ~0.1 s)
    async with boot() as kernel:
        with anyio.fail_after(15):
            tickers = [(await kernel.spawn(ticker, 1.8, name=f"ticker-{i}")).pid for i in range(TICKERS)]
            proc = kernel.spawn_nowait(blocker, how, 0.3, name="blocker")  # not reaped: `top` shows it
            culprit = proc.pid
            await proc.done.wait()
            window = proc.result
            lags = [end - began - TICK_S for pid in tickers for began, end in (await kernel.wait(pid)).result
                    if end < window[0] or began > window[1]]  # the awaits that did not overlap the block
            await until(lambda: bool(blocked_events(kernel, culprit)))

        named = process_info(kernel, culprit)
        assert named.stats.loop_blocks >= 1
        assert named.stats.loop_block_max_s >= 0.8 * BLOCK_S
        assert named.stats.loop_blocked_s >= named.stats.loop_block_max_s

        events = blocked_events(kernel)
        longest = max(events, key=lambda e: e.duration_s)
        assert (longest.pid, longest.outcome) == (culprit, "blocked")
        assert longest.duration_s >= 0.8 * BLOCK_S
        # No other process is blamed for as much (pid 0 stalls are the kernel's or the OS's).
        assert all(e.duration_s < longest.duration_s / 2 for e in events if e.pid not in (culprit, 0))

        loop = kernel.statistics().loop
        assert loop is not None and loop.stalls >= 1 and loop.blocked_s >= 0.8 * BLOCK_S

        shown = render_top(kernel)
        assert f"pid {culprit} blocker" in shown
        assert "loop lag p99" in shown
    assert len(lags) > TICKERS * 20, "the tickers went on around the block"
    return lags


def render_top(kernel: llmos.Kernel) -> str:
    out = Console(file=io.StringIO(), width=200, color_system=None)
    out.print(views.top_view(kernel.ps(include_ended=True), kernel.statistics(), 0.0, "-"))
    return out.file.getvalue()  # type: ignore[attr-defined]


async def test_a_stall_says_where_the_loop_was() -> None:
    async with boot() as kernel:
        kernel.watchdog.kill_after_s = 0
        pid = (await kernel.spawn(spinner, 0.4, name="spinner")).pid
        await kernel.wait(pid, timeout=5)
        await until(lambda: kernel.statistics().loop.last_stall is not None)  # type: ignore[union-attr]
        stall = kernel.statistics().loop.last_stall  # type: ignore[union-attr]
        assert (stall.pid, stall.name, stall.killed) == (pid, "spinner", False)
        assert stall.where.startswith("spin (test_watchdog.py:")
        assert stall.duration_s >= 0.3


async def test_a_child_task_of_a_process_is_reported_by_where_it_was() -> None:
    async def parent(sys: Sys) -> None:
        async def child() -> None:
            spin(0.3)

        async with anyio.create_task_group() as tg:
            tg.start_soon(child)

    async with boot() as kernel:
        await kernel.wait((await kernel.spawn(parent)).pid, timeout=5)
        await until(lambda: bool(blocked_events(kernel)))
        stall = kernel.statistics().loop.last_stall  # type: ignore[union-attr]
        assert (stall.pid, stall.name) == (params.KERNEL_PID, "kernel")  # not under Kernel._run: by place only
        assert stall.where.startswith("spin (test_watchdog.py:")


# -- overhead ------------------------------------------------------------------------------------------
async def cheap_calls(sys: Sys, calls: int) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        await sys.getpid()
    return time.perf_counter() - began


def counted(method: Any, calls: Counter[tuple[int, str]], name: str) -> Any:
    def counting(self: LoopWatchdog, *args: Any) -> Any:
        calls[id(self), name] += 1  # by watchdog: another kernel's watcher may still be winding down
        return method(self, *args)
    return counting


async def test_the_watchdog_works_per_beat_not_per_syscall(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its cost is a heartbeat every LOOP_HEARTBEAT_S and, while the loop beats, a look per beat, however
    many syscalls run meanwhile: nothing on a syscall's path. What that costs in time is measured
    by bench/watchdog.py (on and off, alternating), not here: a timed test fails on a busy host."""
    calls: Counter[tuple[int, str]] = Counter()  # (watchdog, "_settle"): once per beat; "_check": once per look
    for name in ("_settle", "_check"):
        monkeypatch.setattr(LoopWatchdog, name, counted(getattr(LoopWatchdog, name), calls, name))
    began = time.perf_counter()
    async with boot() as kernel:  # the heartbeat and the watcher live as long as the kernel
        await kernel.wait((await kernel.spawn(cheap_calls, 10_000)).pid, timeout=20)
    elapsed = time.perf_counter() - began
    watchdog = kernel.watchdog
    assert calls[id(watchdog), "_settle"] <= elapsed / watchdog.heartbeat_s + 2  # +2: the beat under way at either end
    assert calls[id(watchdog), "_check"] <= elapsed / (watchdog.stall_s / 2) + 2


async def test_the_watcher_looks_once_a_beat_while_the_loop_beats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a look every half stall (~20 a second): one a beat, and one more for each beat that
    came half a stall late or later (on a loaded machine)."""
    calls: Counter[tuple[int, str]] = Counter()
    monkeypatch.setattr(LoopWatchdog, "_check", counted(LoopWatchdog._check, calls, "_check"))
    async with boot() as kernel:
        watchdog = kernel.watchdog
        looks_before, lags_before = calls[id(watchdog), "_check"], len(watchdog._lags)
        await anyio.sleep(1.0)
        looks = calls[id(watchdog), "_check"] - looks_before
        lags = list(watchdog._lags)[lags_before:]
    late_beats = sum(1 for lag in lags if lag >= watchdog.stall_s / 2)
    assert looks <= len(lags) + late_beats + 2  # +2: the beat under way at either end


async def test_signs_of_life_from_the_loop_stand_in_for_the_heartbeats_timer() -> None:
    """A callback posted to the loop that runs (the generation loop's text, mid-burst) is a beat
    with its own lateness, and the heartbeat's sleep starts over: while they come more often
    than a beat, its timer does not wake the loop thread. When they stop, it beats again."""
    async with boot() as kernel:
        watchdog = kernel.watchdog
        await anyio.sleep(watchdog.heartbeat_s * 2)  # beating
        lags_before, sign = len(watchdog._lags), 0.0123  # a lateness no timer beat has
        signs: list[float] = []
        for _ in range(12):  # each sooner than a beat, unless the host is slow
            watchdog.alive(sign)
            signs.append(time.perf_counter())
            await anyio.sleep(watchdog.heartbeat_s / 6)
        during = list(watchdog._lags)[lags_before:]
        await anyio.sleep(watchdog.heartbeat_s * 4)
        after = list(watchdog._lags)[lags_before + len(during):]
    assert during.count(sign) == 12
    # The timer's beats meanwhile: at most the one under way at the first sign, and one for
    # each gap between signs that a loaded host stretched past a beat.
    long_gaps = sum(1 for a, b in zip(signs, signs[1:], strict=False) if b - a >= watchdog.heartbeat_s)
    assert len(during) - 12 <= 1 + long_gaps
    assert len(after) >= 2 and sign not in after  # the timer beats again


async def test_without_the_watchdog_the_kernel_reports_no_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params, "LOOP_HEARTBEAT_S", 0.0)
    async with boot() as kernel:
        assert kernel.statistics().loop is None


async def test_an_idle_loop_has_little_lag() -> None:
    async with boot() as kernel:
        await anyio.sleep(0.5)
        loop = kernel.statistics().loop
        assert loop is not None
        assert loop.heartbeat_s == params.LOOP_HEARTBEAT_S
        assert 0 <= loop.lag_p50_s <= loop.lag_p99_s <= loop.lag_max_s < LAG_P99_LIMIT_S


# -- enforcement ---------------------------------------------------------------------------------------
async def test_a_process_holding_the_loop_past_the_limit_is_stopped_and_the_others_go_on() -> None:
    async with boot() as kernel:
        kernel.watchdog.kill_after_s = 0.3
        bystander = (await kernel.spawn(ticker, 1.5, name="bystander")).pid
        pid = (await kernel.spawn(spinner, 5.0, name="spinner")).pid
        began = time.perf_counter()
        status = await kernel.wait(pid, timeout=10)
        assert time.perf_counter() - began < 2.0, "stopped near the limit, not after its 5 s"
        assert status.state is ProcState.KILLED
        assert status.reason is not None and status.reason.startswith("blocked the event loop for 0.")
        assert "limit 0.3 s" in status.reason
        assert LoopBlocked.__name__ in (status.traceback or "")
        assert (await kernel.wait(bystander, timeout=5)).ok

        await until(lambda: bool(blocked_events(kernel, pid)))
        assert blocked_events(kernel, pid)[-1].outcome == "killed"
        assert kernel.statistics().loop.last_stall.killed  # type: ignore[union-attr]


async def test_a_process_that_swallows_the_exception_dies_at_its_next_await() -> None:
    async def stubborn(sys: Sys) -> str:
        await sys.sleep(0.05)
        try:
            spin(5.0)
        except BaseException:  # noqa: BLE001 -- what a careless app does
            pass
        await sys.sleep(5)
        return "survived"

    async with boot() as kernel:
        kernel.watchdog.kill_after_s = 0.3
        status = await kernel.wait((await kernel.spawn(stubborn)).pid, timeout=10)
        assert status.state is ProcState.KILLED
        assert status.reason is not None and "blocked the event loop" in status.reason


KERNEL_SIDE_BLOCKER = '''
def spin_in_kernel(seconds, spin):
    return spin(seconds)
'''


async def test_a_stall_in_kernel_code_is_reported_but_never_interrupted() -> None:
    # A function the watchdog takes for the kernel's (its module is llmos.kernel.*): the
    # exception must not land there, nor may the process be punished for the kernel's stall.
    namespace: dict[str, Any] = {"__name__": "llmos.kernel.fake_blocking_call"}
    exec(compile(KERNEL_SIDE_BLOCKER, "fake_kernel.py", "exec"), namespace)

    async def app(sys: Sys) -> str:
        await sys.sleep(0.05)
        outcome = namespace["spin_in_kernel"](0.8, spin)
        await sys.sleep(0.05)
        return outcome

    async with boot() as kernel:
        kernel.watchdog.kill_after_s = 0.2
        victim = kernel.spawn_nowait(app, name="victim")
        with anyio.fail_after(10):
            await victim.done.wait()
        assert (victim.state, victim.result) == (ProcState.EXITED, "spun"), victim.reason
        await until(lambda: bool(blocked_events(kernel, victim.pid)))
        assert blocked_events(kernel, victim.pid)[-1].outcome == "blocked"
        assert victim.stats.loop_block_max_s >= 0.6


async def test_the_limit_off_means_never_stopped() -> None:
    async with boot() as kernel:
        kernel.watchdog.kill_after_s = 0
        status = await kernel.wait((await kernel.spawn(spinner, 0.5)).pid, timeout=10)
        assert status.ok and status.result == "spun"


# -- an overloaded machine is nobody's fault --------------------------------------------------------
def test_a_loop_thread_left_without_a_cpu_is_starved_not_held() -> None:
    watchdog = LoopWatchdog(None, runner=LoopWatchdog.run.__code__)  # type: ignore[arg-type]  # no kernel needed
    before = Schedstat(at=10.0, cpu_s=1.000, queued_s=5.0)

    def starved(ran_s: float, queued_s: float) -> bool:
        return watchdog._starved(1.0, before, Schedstat(at=10.05, cpu_s=1.0 + ran_s, queued_s=5.0 + queued_s))

    assert starved(ran_s=0.002, queued_s=0.045)  # a short step the OS did not run
    assert not starved(ran_s=0.060, queued_s=0.045)  # a busy loop with a small share of a loaded CPU
    assert not starved(ran_s=0.0, queued_s=0.0)  # waiting in a blocking call (time.sleep, a read)
    assert not watchdog._starved(1.0, None, None)  # no schedstat (not Linux): blame what runs


def test_a_stall_mostly_spent_collecting_garbage_is_the_gc() -> None:
    watchdog = LoopWatchdog(None, runner=LoopWatchdog.run.__code__)  # type: ignore[arg-type]
    assert watchdog._cause(0.15, 0.08, 0.0, None, None) == "gc"  # 70 ms of code: no stall without the GC
    assert watchdog._cause(1.0, 0.08, 0.0, None, None) == "code"


def test_a_stall_is_blamed_on_whom_the_watcher_saw_most() -> None:
    proc = Process(pid=7, ppid=0, name="spinner", priority=0, capabilities=frozenset(), quotas=Quotas())
    stall = Stall(beat=1, at=0.0)
    stall.saw(Sighting(None, "select (selectors.py:1)", False, None, cause="os"))
    stall.saw(Sighting(proc, "spin (app.py:3)", True, None, cause="gc"))
    for _ in range(3):
        stall.saw(Sighting(proc, "spin (app.py:3)", True, None))
    assert stall.blamed().culprit is proc
    tie = Stall(beat=2, at=0.0)
    tie.saw(Sighting(None, "select (selectors.py:1)", False, None, cause="os"))
    tie.saw(Sighting(proc, "spin (app.py:3)", True, None))
    assert tie.blamed().culprit is proc  # code ran without yielding, however little CPU it got
    assert Sighting(proc, "", True, None, cause="os").culprit is None  # the OS's hold is nobody's
