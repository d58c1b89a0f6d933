"""Processes from spawn to their end: states, failures, kills, quotas, suspension, apps."""

from __future__ import annotations

import sys as pysys
import time
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

import llmos
from llmos.kernel import params
from llmos.syscalls import (
    DEFAULT_APP_CAPS,
    Errno,
    ExitStatus,
    InvalidRequest,
    InvalidState,
    NoSuchProcess,
    ProcState,
    QuotaExceeded,
    Quotas,
    Timeout,
)
from llmos.testing import FakeDriver, process_info, result, spawn_and_wait, until, until_state




def state_of(kernel: llmos.Kernel, pid: int) -> ProcState:
    return {p.pid: p.state for p in kernel.ps(include_ended=True)}[pid]


# -- spawn, wait, exit status -------------------------------------------------------------------
async def test_spawn_returns_a_snapshot_and_wait_the_result() -> None:
    async def main(sys, a, b):  # noqa: ANN001
        return a + b

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main, 2, 3, name="adder", priority=4)
        assert info.pid > params.KERNEL_PID
        assert info.ppid == params.KERNEL_PID
        assert info.name == "adder"
        assert info.priority == 4
        assert info.state is ProcState.READY
        assert info.capabilities == frozenset({"*"})
        status = await kernel.wait(info.pid)
    assert status == ExitStatus(pid=info.pid, name="adder", state=ProcState.EXITED, reason=None, result=5)
    assert status.ok


async def test_pids_are_unique_and_increasing() -> None:
    async def main(sys):  # noqa: ANN001
        return sys.pid

    async with llmos.boot(FakeDriver()) as kernel:
        infos = [await kernel.spawn(main) for _ in range(5)]
        pids = [i.pid for i in infos]
        assert pids == sorted(set(pids))
        for info in infos:
            assert result(await kernel.wait(info.pid)) == info.pid


async def test_default_name_is_the_apps_qualname() -> None:
    async def worker(sys):  # noqa: ANN001
        return None

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(worker)
        assert info.name.endswith("worker")
        await kernel.wait(info.pid)


async def test_wait_reaps_so_a_second_wait_is_esrch() -> None:
    async def main(sys):  # noqa: ANN001
        return 1

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main)
        await kernel.wait(info.pid)
        with pytest.raises(NoSuchProcess) as err:
            await kernel.wait(info.pid)
        assert err.value.code is Errno.ESRCH
        assert info.pid not in {p.pid for p in kernel.ps(include_ended=True)}


async def test_wait_timeout_on_a_running_process() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.sleep(5)

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main)
        with pytest.raises(Timeout) as err:
            await kernel.wait(info.pid, timeout=0.05)
        assert err.value.code is Errno.ETIMEDOUT
        assert state_of(kernel, info.pid) is ProcState.BLOCKED  # still alive, and not reaped


async def test_wait_with_zero_timeout_on_an_ended_process_returns_its_status() -> None:
    async def main(sys):  # noqa: ANN001
        return "done"

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main)
        await until(lambda: state_of(kernel, info.pid).terminal)
        status = await kernel.wait(info.pid, timeout=0)
        assert status.result == "done"


# -- states ------------------------------------------------------------------------------------
async def test_ps_shows_live_states_and_terminal_states_with_reasons() -> None:
    async def sleeper(sys):  # noqa: ANN001
        await sys.sleep(5)

    async def failing(sys):  # noqa: ANN001
        raise ValueError("bad input")

    async def fine(sys):  # noqa: ANN001
        return 0

    async with llmos.boot(FakeDriver()) as kernel:
        s = await kernel.spawn(sleeper, name="s")
        v = await kernel.spawn(sleeper, name="victim")
        f = await kernel.spawn(failing, name="f")
        e = await kernel.spawn(fine, name="e")
        await until(lambda: state_of(kernel, f.pid).terminal and state_of(kernel, e.pid).terminal
                    and state_of(kernel, v.pid) is ProcState.BLOCKED)
        kernel.kill(v.pid, "enough")
        await until(lambda: state_of(kernel, v.pid).terminal)
        live = {p.pid: p for p in kernel.ps()}
        everything = {p.pid: p for p in kernel.ps(include_ended=True)}
    assert set(live) == {s.pid}
    assert live[s.pid].state is ProcState.BLOCKED
    assert (everything[e.pid].state, everything[e.pid].reason) == (ProcState.EXITED, None)
    assert (everything[f.pid].state, everything[f.pid].reason) == (ProcState.FAILED, "ValueError: bad input")
    assert (everything[v.pid].state, everything[v.pid].reason) == (ProcState.KILLED, "enough")
    assert everything[v.pid].ended_at is not None
    assert [p.pid for p in kernel.ps(include_ended=True)] == sorted(everything)


def test_states_are_ordered_and_terminal_from_exited_on() -> None:
    order = [ProcState.NEW, ProcState.READY, ProcState.RUNNING, ProcState.BLOCKED, ProcState.SUSPENDED,
             ProcState.EXITED, ProcState.KILLED, ProcState.FAILED]
    assert order == sorted(order)
    assert [s.terminal for s in order] == [False] * 5 + [True] * 3


async def test_a_process_sees_itself_running() -> None:
    async def main(sys):  # noqa: ANN001
        me = [p for p in await sys.ps() if p.pid == sys.pid]
        return me[0].state

    async with llmos.boot(FakeDriver()) as kernel:
        assert result(await spawn_and_wait(kernel, main)) is ProcState.RUNNING


async def test_a_failing_process_fails_alone() -> None:
    async def crash(sys):  # noqa: ANN001
        await sys.sleep(0.01)
        raise KeyError("missing")

    async def sibling(sys):  # noqa: ANN001
        total = 0
        for i in range(5):
            await sys.sleep(0.01)
            total += i
        return total

    async with llmos.boot(FakeDriver()) as kernel:
        a = await kernel.spawn(crash)
        b = await kernel.spawn(sibling)
        failed = await kernel.wait(a.pid)
        assert result(await kernel.wait(b.pid)) == 10
        # and the kernel still takes new work
        assert result(await spawn_and_wait(kernel, sibling)) == 10
    assert failed.state is ProcState.FAILED
    assert failed.reason == "KeyError: 'missing'"
    assert not failed.ok
    assert failed.result is None
    assert failed.traceback is not None
    assert "KeyError: 'missing'" in failed.traceback
    assert "in crash" in failed.traceback


# -- kill --------------------------------------------------------------------------------------
async def test_kill_ends_a_blocked_process_with_its_reason() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.recv()
        return "got mail"

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main)
        await until(lambda: state_of(kernel, info.pid) is ProcState.BLOCKED)
        kernel.kill(info.pid, "operator said so")
        status = await kernel.wait(info.pid, timeout=1)
    assert (status.state, status.reason, status.result) == (ProcState.KILLED, "operator said so", None)


async def test_kill_default_reason_and_killing_an_ended_process_is_a_noop() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.sleep(5)

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main)
        kernel.kill(info.pid)
        await until(lambda: state_of(kernel, info.pid).terminal)
        kernel.kill(info.pid, "again")  # no error, no change
        status = await kernel.wait(info.pid)
    assert (status.state, status.reason) == (ProcState.KILLED, "killed")


async def test_kill_of_an_unknown_pid_is_esrch() -> None:
    async with llmos.boot(FakeDriver()) as kernel:
        with pytest.raises(NoSuchProcess) as err:
            kernel.kill(4242)
    assert err.value.code is Errno.ESRCH
    assert "4242" in str(err.value)


async def test_a_process_that_kills_itself_ends_killed() -> None:
    after = []

    async def main(sys):  # noqa: ANN001
        await sys.kill(sys.pid, "seppuku")
        after.append("ran on")

    async with llmos.boot(FakeDriver()) as kernel:
        status = await spawn_and_wait(kernel, main)
    assert (status.state, status.reason) == (ProcState.KILLED, "seppuku")
    assert after == []


async def test_killing_a_process_cancels_its_generation_and_frees_the_model() -> None:
    words = 200
    driver = FakeDriver(step_delay_s=0.005)
    driver.enqueue(" ".join(f"w{i}" for i in range(words)))

    async def talker(sys):  # noqa: ANN001
        return await sys.chat("tell me everything")

    async with llmos.boot(driver) as kernel:
        info = await kernel.spawn(talker)
        await until(lambda: driver.jobs and len(driver.jobs[0].token_ids) >= 3)
        kernel.kill(info.pid, "too chatty")
        status = await kernel.wait(info.pid, timeout=1)
        # the model is free again long before the 200-word answer could have been decoded
        began = time.perf_counter()
        second = result(await spawn_and_wait(kernel, talker))
        waited = time.perf_counter() - began
    job = driver.jobs[0]
    assert (status.state, status.reason) == (ProcState.KILLED, "too chatty")
    assert job.cancelled
    assert job.finish_reason == "cancelled"
    assert 3 <= len(job.token_ids) < words // 2
    assert second.text == "echo: tell me everything"
    assert waited < words * driver.step_delay_s / 2
    assert len(driver.jobs) == 2


async def test_killing_a_process_whose_request_waits_removes_it_from_the_queue() -> None:
    driver = FakeDriver(step_delay_s=0.005)
    driver.enqueue(" ".join(["x"] * 40), "never used")

    async def talker(sys, text):  # noqa: ANN001
        return await sys.chat(text)

    async with llmos.boot(driver, max_batch=1) as kernel:
        first = await kernel.spawn(talker, "first")
        await until(lambda: len(driver.jobs) == 1)
        second = await kernel.spawn(talker, "second")
        await until(lambda: kernel.scheduler.statistics().waiting == 1)
        kernel.kill(second.pid)
        killed = await kernel.wait(second.pid, timeout=1)
        assert kernel.scheduler.statistics().waiting == 0
        done = result(await kernel.wait(first.pid, timeout=2))
    assert killed.state.terminal
    assert done.completion_tokens == 40
    assert len(driver.jobs) == 1  # the killed request never reached the model
    assert driver.prompts == ["<user>first\n<assistant>"]


async def test_killing_a_process_while_its_request_waits_ends_it_killed() -> None:
    driver = FakeDriver(step_delay_s=0.005)
    driver.enqueue(" ".join(["x"] * 40))

    async def talker(sys, text):  # noqa: ANN001
        return await sys.chat(text)

    async with llmos.boot(driver, max_batch=1) as kernel:
        first = await kernel.spawn(talker, "first")
        await until(lambda: len(driver.batches) == 1)
        second = await kernel.spawn(talker, "second")
        await until(lambda: kernel.scheduler.statistics().waiting == 1)
        kernel.kill(second.pid, "no longer needed")
        killed = await kernel.wait(second.pid, timeout=1)
        await kernel.wait(first.pid, timeout=2)
    assert (killed.state, killed.reason, killed.result) == (ProcState.KILLED, "no longer needed", None)


# -- quotas ------------------------------------------------------------------------------------
async def test_deadline_kills_the_process() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.sleep(5)
        return "too late"

    async with llmos.boot(FakeDriver()) as kernel:
        began = time.perf_counter()
        status = await spawn_and_wait(kernel, main, quotas=Quotas(deadline_s=0.1))
        took = time.perf_counter() - began
    assert status.state is ProcState.KILLED
    assert "deadline" in status.reason
    assert status.reason == "deadline of 0.1 s exceeded"
    assert 0.09 <= took < 1.0


async def test_syscall_quota_raises_a_catchable_quota_exceeded() -> None:
    async def main(sys):  # noqa: ANN001
        pids = [await sys.getpid() for _ in range(3)]
        try:
            await sys.getpid()
        except QuotaExceeded as exc:
            return pids, exc.code, str(exc)
        return pids, None, None

    async with llmos.boot(FakeDriver()) as kernel:
        status = await spawn_and_wait(kernel, main, quotas=Quotas(max_syscalls=3))
    pids, code, message = result(status)
    assert len(pids) == 3 and len(set(pids)) == 1
    assert code is Errno.EDQUOT
    assert "quota of 3 syscalls" in message


async def test_a_process_swallowing_quota_errors_is_killed_after_the_grace() -> None:
    attempts = []

    async def main(sys):  # noqa: ANN001
        for i in range(1000):
            attempts.append(i)
            try:
                await sys.getpid()
            except QuotaExceeded:
                await anyio.sleep(0)  # the loop yields, as a real agent's would
        return "escaped"

    async with llmos.boot(FakeDriver()) as kernel:
        status = await spawn_and_wait(kernel, main, quotas=Quotas(max_syscalls=5))
    assert status.state is ProcState.KILLED
    assert status.reason == "syscall quota of 5 exceeded and calls went on"
    assert len(attempts) == 5 + params.QUOTA_GRACE_SYSCALLS + 1


async def test_a_tight_loop_swallowing_quota_errors_is_killed_after_the_grace() -> None:
    attempts = []

    async def main(sys):  # noqa: ANN001
        for i in range(2000):  # bounded, so the bug cannot hang the test run
            attempts.append(i)
            try:
                await sys.getpid()
            except QuotaExceeded:
                pass
        return "escaped"

    async with llmos.boot(FakeDriver()) as kernel:
        status = await spawn_and_wait(kernel, main, quotas=Quotas(max_syscalls=5))
    assert status.state is ProcState.KILLED
    assert len(attempts) <= 5 + params.QUOTA_GRACE_SYSCALLS + 2


async def test_token_quota_caps_the_reply_then_refuses() -> None:
    driver = FakeDriver()
    driver.enqueue("one two three four five six seven eight")
    prompt_len = len("<user>hi\n<assistant>")

    async def main(sys):  # noqa: ANN001
        reply = await sys.chat("hi")
        try:
            await sys.chat("again")
        except QuotaExceeded as exc:
            return reply, exc.code
        return reply, None

    async with llmos.boot(driver) as kernel:
        status = await spawn_and_wait(kernel, main, quotas=Quotas(max_tokens=prompt_len + 3))
    reply, code = result(status)
    assert reply.finish_reason == "length"
    assert reply.completion_tokens == 3
    assert reply.prompt_tokens == prompt_len
    assert reply.text == "one two three "
    assert code is Errno.EDQUOT


# -- suspend, resume, nice ---------------------------------------------------------------------
async def test_a_suspended_process_stops_at_its_next_syscall_and_resumes_after() -> None:
    progress: list[int] = []
    clock: list[int] = []

    async def main(sys):  # noqa: ANN001
        for i in range(1000):
            await sys.sleep(0.002)
            progress.append(i)

    async def ticker(sys):  # noqa: ANN001 - runs on meanwhile: the test's measure of time passing
        for i in range(10_000):
            await sys.sleep(0.002)
            clock.append(i)

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main)
        tick = await kernel.spawn(ticker)
        await until(lambda: len(progress) >= 3)
        calls = process_info(kernel, info.pid).stats.syscalls
        kernel.suspend(info.pid)
        assert state_of(kernel, info.pid) is ProcState.SUSPENDED
        # the sleep in flight ends; the next call is issued (counted) but does not run
        await until(lambda: process_info(kernel, info.pid).stats.syscalls == calls + 1)
        frozen, seen = len(progress), len(clock)
        await until(lambda: len(clock) >= seen + 20)  # the time of twenty of its sleeps
        assert len(progress) == frozen
        assert process_info(kernel, info.pid).stats.syscalls == calls + 1
        assert state_of(kernel, info.pid) is ProcState.SUSPENDED
        kernel.resume(info.pid)
        assert state_of(kernel, info.pid) in (ProcState.RUNNING, ProcState.BLOCKED)
        await until(lambda: len(progress) >= frozen + 3)
        kernel.kill(info.pid)
        kernel.kill(tick.pid)


@pytest.mark.parametrize(("act", "suspended_first", "complaint"),
                         [("resume", False, "not suspended"), ("suspend", True, "already suspended")])
async def test_suspend_and_resume_errors(act: str, suspended_first: bool, complaint: str) -> None:
    async def main(sys):  # noqa: ANN001
        await sys.sleep(5)

    async def quick(sys):  # noqa: ANN001
        return None

    async with llmos.boot(FakeDriver()) as kernel:
        call = getattr(kernel, act)
        info = await kernel.spawn(main)
        if suspended_first:
            kernel.suspend(info.pid)
        with pytest.raises(InvalidState, match=complaint) as err:
            call(info.pid)
        assert err.value.code is Errno.EINVAL
        ended = await kernel.spawn(quick)
        await until(lambda: state_of(kernel, ended.pid).terminal)
        with pytest.raises(NoSuchProcess, match="EXITED"):
            call(ended.pid)
        with pytest.raises(NoSuchProcess):
            call(999)


async def test_killing_a_suspended_process() -> None:
    async def main(sys):  # noqa: ANN001
        while True:
            await sys.sleep(0.001)

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main)
        await until(lambda: process_info(kernel, info.pid).stats.syscalls >= 3)
        calls = process_info(kernel, info.pid).stats.syscalls
        kernel.suspend(info.pid)
        await until(lambda: process_info(kernel, info.pid).stats.syscalls == calls + 1)  # stopped at its next call
        kernel.kill(info.pid, "while suspended")
        status = await kernel.wait(info.pid, timeout=1)
    assert (status.state, status.reason) == (ProcState.KILLED, "while suspended")


async def test_a_suspended_process_generation_waits_until_resume() -> None:
    driver = FakeDriver()

    async def main(sys):  # noqa: ANN001
        await sys.recv()  # suspended meanwhile; the chat below must wait for resume
        return await sys.chat("hello")

    async with llmos.boot(driver) as kernel:
        info = await kernel.spawn(main)
        await until_state(kernel, info.pid, ProcState.BLOCKED)
        kernel.suspend(info.pid)
        kernel.send(info.pid, "go on")  # the recv in flight returns; the chat is issued and stops
        await until(lambda: process_info(kernel, info.pid).stats.syscalls == 2)
        assert driver.jobs == []
        assert state_of(kernel, info.pid) is ProcState.SUSPENDED
        kernel.resume(info.pid)
        reply = result(await kernel.wait(info.pid, timeout=2))
    assert reply.text == "echo: hello"


async def test_suspending_a_process_mid_generation_takes_its_generation_out_of_the_batch() -> None:
    driver = FakeDriver(step_delay_s=0.005)
    story = " ".join(f"w{i}" for i in range(60))
    driver.enqueue(story, story)

    async def talker(sys):  # noqa: ANN001
        return await sys.chat("tell me a story")

    async with llmos.boot(driver) as kernel:
        a = await kernel.spawn(talker, name="a")
        b = await kernel.spawn(talker, name="b")
        await until(lambda: len(driver.jobs) == 2 and all(len(job.token_ids) >= 3 for job in driver.jobs))
        job_a, job_b = sorted(driver.jobs, key=lambda job: job.pid != a.pid)
        assert sorted(driver.batches[-1]) == sorted([job_a.id, job_b.id])  # decoded together
        kernel.suspend(a.pid)
        assert state_of(kernel, a.pid) is ProcState.SUSPENDED
        await until(lambda: driver.batches[-1] == [job_b.id])  # out at the step after the one in flight
        left, frozen = len(driver.batches) - 1, len(job_a.token_ids)
        await until(lambda: len(driver.batches) >= left + 10)  # b goes on alone
        assert all(job_a.id not in batch for batch in driver.batches[left:])
        assert len(job_a.token_ids) == frozen and not job_a.finished and not job_a.cancelled
        assert state_of(kernel, a.pid) is ProcState.SUSPENDED
        kernel.resume(a.pid)
        reply_a = result(await kernel.wait(a.pid, timeout=5))
        reply_b = result(await kernel.wait(b.pid, timeout=5))
    assert reply_a.text == reply_b.text == story  # a picked up where it stopped
    assert any(job_a.id in batch for batch in driver.batches[left + 10:])


async def test_nice_changes_priority_and_checks_the_range() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.sleep(5)

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main)
        kernel.nice(info.pid, 7)
        assert {p.pid: p.priority for p in kernel.ps()}[info.pid] == 7
        kernel.nice(info.pid, params.NICE_MIN)
        assert {p.pid: p.priority for p in kernel.ps()}[info.pid] == params.NICE_MIN
        for bad in (params.NICE_MIN - 1, params.NICE_MAX + 1):
            with pytest.raises(InvalidRequest, match="priority must be within"):
                kernel.nice(info.pid, bad)
        with pytest.raises(NoSuchProcess):
            kernel.nice(31337, 0)


async def test_spawn_checks_the_priority_range() -> None:
    async def main(sys):  # noqa: ANN001
        return None

    async with llmos.boot(FakeDriver()) as kernel:
        with pytest.raises(InvalidRequest) as err:
            await kernel.spawn(main, priority=20)
        assert err.value.code is Errno.EINVAL
        assert kernel.ps() == []


# -- kernel shutdown, sys.exit ------------------------------------------------------------------
async def test_kernel_shutdown_kills_the_processes_left() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.sleep(30)

    async with llmos.boot(FakeDriver()) as kernel:
        pids = [(await kernel.spawn(main)).pid for _ in range(3)]
        for pid in pids:
            await until_state(kernel, pid, ProcState.BLOCKED)
        began = time.perf_counter()
    assert time.perf_counter() - began < 1
    ended = {p.pid: p for p in kernel.ps(include_ended=True)}
    assert kernel.ps() == []
    for pid in pids:
        assert (ended[pid].state, ended[pid].reason) == (ProcState.KILLED, "kernel shutdown")


async def test_spawn_outside_a_running_kernel_is_invalid_state() -> None:
    async def main(sys):  # noqa: ANN001
        return None

    async with llmos.boot(FakeDriver()) as kernel:
        pass
    with pytest.raises(InvalidState, match="not running"):
        await kernel.spawn(main)


@pytest.mark.parametrize(("code", "state", "reason"),
                         [(None, ProcState.EXITED, None), (0, ProcState.EXITED, None),
                          (3, ProcState.FAILED, "exit status 3"), ("bye", ProcState.FAILED, "exit status bye")])
async def test_sys_exit(code: Any, state: ProcState, reason: str | None) -> None:
    async def main(sys):  # noqa: ANN001
        pysys.exit(code)

    async def bystander(sys):  # noqa: ANN001
        await sys.sleep(0.02)
        return "alive"

    async with llmos.boot(FakeDriver()) as kernel:
        other = await kernel.spawn(bystander)
        status = await spawn_and_wait(kernel, main)
        assert result(await kernel.wait(other.pid)) == "alive"
    assert (status.state, status.reason) == (state, reason)


# -- what an app can be ---------------------------------------------------------------------
class Greeter:
    greeting = "hello"

    async def main(self, sys, who):  # noqa: ANN001
        return f"{self.greeting} {who} from {sys.pid}"


async def test_a_class_app_runs_its_main() -> None:
    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(Greeter, "ada")
        status = await kernel.wait(info.pid)
    assert status.result == f"hello ada from {info.pid}"
    assert info.name == "Greeter.main"


APP_FILE = """
    async def main(sys, x):
        return ("main", x, sys.pid)

    async def other(sys):
        return "other"

    class Klass:
        async def main(self, sys):
            return "klass"

    def not_async(sys):
        return "sync"
"""


async def test_app_references_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "agent_app.py"
    path.write_text(textwrap.dedent(APP_FILE))
    async with llmos.boot(FakeDriver()) as kernel:
        a = await kernel.spawn(f"{path}:main", 7)
        assert result(await kernel.wait(a.pid)) == ("main", 7, a.pid)
        b = await kernel.spawn(str(path), 8)  # attr defaults to main
        assert result(await kernel.wait(b.pid)) == ("main", 8, b.pid)
        assert result(await spawn_and_wait(kernel, f"{path}:other")) == "other"
        assert result(await spawn_and_wait(kernel, f"{path}:Klass")) == "klass"


async def test_app_reference_to_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "llmos_test_refmod.py").write_text("async def go(sys):\n    return 'from module'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    async with llmos.boot(FakeDriver()) as kernel:
        assert result(await spawn_and_wait(kernel, "llmos_test_refmod:go")) == "from module"


@pytest.mark.parametrize("suffix", [":nope", ":not_async"])
async def test_bad_attribute_of_an_app_file_is_invalid_request(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "agent_app2.py"
    path.write_text(textwrap.dedent(APP_FILE))
    async with llmos.boot(FakeDriver()) as kernel:
        with pytest.raises(InvalidRequest) as err:
            await kernel.spawn(f"{path}{suffix}")
        assert err.value.code is Errno.EINVAL
        assert kernel.ps() == []


async def test_missing_or_broken_app_files_are_invalid_request(tmp_path: Path) -> None:
    broken = tmp_path / "broken_app.py"
    broken.write_text("def main(:\n")
    raising = tmp_path / "raising_app.py"
    raising.write_text("raise RuntimeError('at import')\n")
    async with llmos.boot(FakeDriver()) as kernel:
        with pytest.raises(InvalidRequest, match="does not exist"):
            await kernel.spawn(f"{tmp_path / 'absent.py'}:main")
        with pytest.raises(InvalidRequest, match="failed to import: SyntaxError"):
            await kernel.spawn(str(broken))
        with pytest.raises(InvalidRequest, match="failed to import: RuntimeError: at import"):
            await kernel.spawn(str(raising))
        with pytest.raises(InvalidRequest, match="cannot import app module"):
            await kernel.spawn("llmos_no_such_module_xyz:main")


def sync_main(sys):  # noqa: ANN001, ANN201
    return None


class NoMain:
    pass


class SyncMain:
    def main(self, sys):  # noqa: ANN001, ANN201
        return None


@pytest.mark.parametrize("app", [sync_main, 42, None, NoMain, SyncMain, lambda sys: None],
                         ids=["sync-function", "int", "none", "class-without-main", "class-with-sync-main", "lambda"])
async def test_bad_app_is_invalid_request(app: Any) -> None:
    async with llmos.boot(FakeDriver()) as kernel:
        with pytest.raises(InvalidRequest, match="an app must be") as err:
            await kernel.spawn(app)
        assert err.value.code is Errno.EINVAL
        assert kernel.ps(include_ended=True) == []


class NeedsArguments:
    def __init__(self, config: str) -> None:
        self.config = config

    async def main(self, sys):  # noqa: ANN001, ANN201
        return self.config


async def test_class_app_whose_constructor_needs_arguments_is_invalid_request() -> None:
    async with llmos.boot(FakeDriver()) as kernel:
        with pytest.raises(InvalidRequest):
            await kernel.spawn(NeedsArguments)


@pytest.mark.parametrize("ref", ["", ":main", "..relative:main"])
async def test_malformed_module_reference_is_invalid_request(ref: str) -> None:
    async with llmos.boot(FakeDriver()) as kernel:
        with pytest.raises(InvalidRequest):
            await kernel.spawn(ref)


async def test_default_caps_of_a_kernel_spawned_process_and_explicit_caps() -> None:
    async def main(sys):  # noqa: ANN001
        return None

    async with llmos.boot(FakeDriver()) as kernel:
        a = await kernel.spawn(main, caps=DEFAULT_APP_CAPS)
        b = await kernel.spawn(main, caps=["ipc"])
        assert a.capabilities == DEFAULT_APP_CAPS
        assert b.capabilities == frozenset({"ipc"})
        await kernel.wait(a.pid)
        await kernel.wait(b.pid)


async def test_a_process_is_blocked_while_any_of_its_blocking_calls_is() -> None:
    # A process whose tasks wait on two things at once is RUNNING only when both are done.
    async def napper(sys, seconds):  # noqa: ANN001
        await sys.sleep(seconds)

    async def two_waits(sys):  # noqa: ANN001
        short = await sys.spawn(napper, 0.01)
        long = await sys.spawn(napper, 30)
        states = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(sys.wait, long.pid)
            await sys.wait(short.pid)  # the first wait to end leaves the other in flight
            states.append([p.state for p in await sys.ps() if p.pid == sys.pid][0])
            await sys.kill(long.pid)
        states.append([p.state for p in await sys.ps() if p.pid == sys.pid][0])
        return states

    async with llmos.boot(FakeDriver(), memory=None) as kernel:
        states = result(await spawn_and_wait(kernel, two_waits))
    assert states == [ProcState.BLOCKED, ProcState.RUNNING]
