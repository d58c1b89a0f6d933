"""Process syscalls as an app issues them: spawn, wait, kill, suspend, resume, nice, ps, getpid, sleep."""

from __future__ import annotations

import time
from typing import Any

import pytest

import llmos
from llmos.syscalls import (
    DEFAULT_APP_CAPS,
    Errno,
    ExitStatus,
    GetPid,
    InvalidRequest,
    InvalidState,
    NoSuchProcess,
    PermissionDenied,
    ProcessInfo,
    ProcState,
    Quotas,
    Timeout,
    TooManyProcesses,
)
from llmos.kernel import params
from llmos.testing import FakeDriver, caught, result, spawn_and_wait, until



async def idle(sys):  # noqa: ANN001, ANN201
    await sys.sleep(10)


async def answer(sys, value):  # noqa: ANN001, ANN201
    return value


# -- spawn and wait -------------------------------------------------------------------------------
async def test_spawn_and_wait_for_a_child() -> None:
    async def parent(sys):  # noqa: ANN001
        child = await sys.spawn(answer, {"n": 1}, name="kid")
        status = await sys.wait(child.pid)
        return child, status

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(parent, caps=DEFAULT_APP_CAPS, priority=3)
        child, status = result(await kernel.wait(info.pid))
    assert isinstance(child, ProcessInfo)
    assert child.ppid == info.pid
    assert child.name == "kid"
    assert child.priority == 3  # inherited from the parent
    assert child.capabilities == DEFAULT_APP_CAPS  # inherited when not narrowed
    assert status == ExitStatus(pid=child.pid, name="kid", state=ProcState.EXITED, reason=None, result={"n": 1})


async def test_spawn_narrows_capabilities_and_never_widens_them() -> None:
    async def parent(sys):  # noqa: ANN001
        child = await sys.spawn(answer, 0, caps=["ipc", "proc.admin", "model.generate"])
        await sys.wait(child.pid)
        return child.capabilities

    async with llmos.boot(FakeDriver()) as kernel:
        caps = result(await spawn_and_wait(kernel, parent, caps={"ipc", "proc.spawn"}))
    assert caps == frozenset({"ipc"})


async def test_a_wildcard_grants_the_names_below_it() -> None:
    async def parent(sys):  # noqa: ANN001
        child = await sys.spawn(answer, 0, caps=["proc.spawn", "proc.admin", "ipc"])
        await sys.wait(child.pid)
        return child.capabilities

    async with llmos.boot(FakeDriver()) as kernel:
        caps = result(await spawn_and_wait(kernel, parent, caps={"proc.*"}))
    assert caps == frozenset({"proc.spawn", "proc.admin"})


async def test_spawn_with_quotas_as_a_dict() -> None:
    async def parent(sys):  # noqa: ANN001
        child = await sys.spawn(idle, quotas={"deadline_s": 0.05, "max_syscalls": 9})
        return child.quotas, await sys.wait(child.pid)

    async with llmos.boot(FakeDriver()) as kernel:
        quotas, status = result(await spawn_and_wait(kernel, parent))
    assert quotas == Quotas(deadline_s=0.05, max_syscalls=9)
    assert status.state is ProcState.KILLED and "deadline" in status.reason


@pytest.mark.parametrize("options", [{"name": ""}, {"priority": 20}, {"priority": -21},
                                     {"quotas": {"max_syscalls": 0}}, {"quotas": {"deadline_s": -1}},
                                     {"caps": [1, 2]}])
async def test_spawn_with_bad_arguments_is_einval(options: dict[str, Any]) -> None:
    async def parent(sys):  # noqa: ANN001
        return await caught(sys.spawn(answer, 0, **options))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, parent))
        assert [p.pid for p in kernel.ps(include_ended=True)] == []  # the parent was reaped; no child
    assert isinstance(err, InvalidRequest)
    assert err.code is Errno.EINVAL
    assert "bad arguments to 'spawn'" in str(err)


async def test_spawn_with_a_misspelt_quota_is_einval() -> None:
    async def parent(sys):  # noqa: ANN001
        return await caught(sys.spawn(answer, 0, quotas={"max_token": 10}))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, parent))
    assert type(err) is InvalidRequest


async def test_spawn_of_a_bad_app_is_einval() -> None:
    def not_async(sys):  # noqa: ANN001, ANN202
        return None

    async def parent(sys):  # noqa: ANN001
        return await caught(sys.spawn(not_async))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, parent))
    assert type(err) is InvalidRequest
    assert "an app must be" in err.message


async def test_spawn_without_the_capability_is_eperm() -> None:
    async def child(sys):  # noqa: ANN001
        return await caught(sys.spawn(answer, 1))

    async def parent(sys):  # noqa: ANN001
        kid = await sys.spawn(child, caps=["ipc"])
        return (await sys.wait(kid.pid)).result

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, parent, caps=DEFAULT_APP_CAPS))
        assert len(kernel.ps(include_ended=True)) == 0
    assert type(err) is PermissionDenied
    assert err.code is Errno.EPERM
    assert "'proc.spawn'" in err.message


async def test_spawning_at_a_higher_priority_than_your_own_is_eperm() -> None:
    async def parent(sys):  # noqa: ANN001
        err = await caught(sys.spawn(answer, 0, priority=-1))
        lower = await sys.spawn(answer, 0, priority=5)  # lowering is fine
        await sys.wait(lower.pid)
        return err, lower.priority

    async with llmos.boot(FakeDriver()) as kernel:
        err, priority = result(await spawn_and_wait(kernel, parent, caps=DEFAULT_APP_CAPS))
        admin = result(await spawn_and_wait(kernel, parent_with_admin))
    assert type(err) is PermissionDenied and "'proc.admin'" in err.message
    assert priority == 5
    assert admin == -10


async def parent_with_admin(sys):  # noqa: ANN001, ANN201
    child = await sys.spawn(answer, 0, priority=-10)
    await sys.wait(child.pid)
    return child.priority


async def test_too_many_processes_is_eagain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params, "MAX_PROCESSES", 2)

    async def parent(sys):  # noqa: ANN001
        first = await sys.spawn(idle)
        err = await caught(sys.spawn(idle))
        await sys.kill(first.pid)
        return err

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, parent))
    assert type(err) is TooManyProcesses
    assert err.code is Errno.EAGAIN


async def test_wait_for_yourself_is_einval_and_for_nobody_esrch() -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.wait(sys.pid)), await caught(sys.wait(987654))

    async with llmos.boot(FakeDriver()) as kernel:
        self_err, missing = result(await spawn_and_wait(kernel, main))
    assert type(self_err) is InvalidRequest and "itself" in self_err.message
    assert type(missing) is NoSuchProcess and missing.code is Errno.ESRCH


async def test_wait_with_a_timeout_is_etimedout_and_the_child_lives_on() -> None:
    async def parent(sys):  # noqa: ANN001
        child = await sys.spawn(idle)
        err = await caught(sys.wait(child.pid, timeout=0.02))
        alive = [p.state for p in await sys.ps() if p.pid == child.pid]
        await sys.kill(child.pid, "done waiting")
        return err, alive, await sys.wait(child.pid)

    async with llmos.boot(FakeDriver()) as kernel:
        err, alive, status = result(await spawn_and_wait(kernel, parent))
    assert type(err) is Timeout and err.code is Errno.ETIMEDOUT
    assert alive == [ProcState.BLOCKED]
    assert (status.state, status.reason) == (ProcState.KILLED, "done waiting")


async def test_wait_with_a_negative_timeout_is_einval() -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.wait(1, timeout=-1))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is InvalidRequest


async def test_a_process_waiting_shows_blocked() -> None:
    async def parent(sys):  # noqa: ANN001
        child = await sys.spawn(idle, name="sleepy")
        return await sys.wait(child.pid)

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(parent)
        await until(lambda: len(kernel.ps()) == 2 and all(p.state is ProcState.BLOCKED for p in kernel.ps()))
        states = {p.name: p.state for p in kernel.ps()}
        kernel.kill(next(p.pid for p in kernel.ps() if p.name == "sleepy"))
        status = result(await kernel.wait(info.pid))
    assert states["sleepy"] is ProcState.BLOCKED
    assert states[info.name] is ProcState.BLOCKED
    assert status.state is ProcState.KILLED


# -- kill -----------------------------------------------------------------------------------------
async def test_kill_a_child_with_a_reason() -> None:
    async def parent(sys):  # noqa: ANN001
        child = await sys.spawn(idle)
        await sys.kill(child.pid, "not needed")
        return await sys.wait(child.pid)

    async with llmos.boot(FakeDriver()) as kernel:
        status = result(await spawn_and_wait(kernel, parent, caps=DEFAULT_APP_CAPS))
    assert (status.state, status.reason) == (ProcState.KILLED, "not needed")


async def test_kill_a_grandchild() -> None:
    async def middle(sys):  # noqa: ANN001
        await sys.spawn(idle, name="grandchild")
        await sys.sleep(10)

    async def top(sys):  # noqa: ANN001
        child = await sys.spawn(middle)
        while not any(p.name == "grandchild" for p in await sys.ps()):
            await sys.sleep(0.005)
        grandchild = next(p for p in await sys.ps() if p.name == "grandchild")
        await sys.kill(grandchild.pid, "from above")
        status = await sys.wait(grandchild.pid)
        await sys.kill(child.pid)
        return status

    async with llmos.boot(FakeDriver()) as kernel:
        status = result(await spawn_and_wait(kernel, top, caps=DEFAULT_APP_CAPS))
    assert (status.state, status.reason) == (ProcState.KILLED, "from above")


async def test_kill_of_a_missing_pid_is_esrch() -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.kill(55555))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main, caps=DEFAULT_APP_CAPS))
    assert type(err) is NoSuchProcess
    assert err.code is Errno.ESRCH
    assert "55555" in err.message


async def test_controlling_a_non_descendant_is_eperm_without_proc_admin() -> None:
    async def meddler(sys, target):  # noqa: ANN001
        errors = [await caught(sys.kill(target)), await caught(sys.nice(5, pid=target)),
                  await caught(sys.resume(target)), await caught(sys.wait(target)),
                  await caught(sys.suspend(target))]
        return [(type(e).__name__, e.code) for e in errors]

    async with llmos.boot(FakeDriver()) as kernel:
        victim = await kernel.spawn(idle)
        errors = result(await spawn_and_wait(kernel, meddler, victim.pid, caps=DEFAULT_APP_CAPS))
        assert {p.pid: p.state for p in kernel.ps()}[victim.pid] is ProcState.BLOCKED
    assert errors == [("PermissionDenied", Errno.EPERM)] * 5


async def test_proc_admin_may_control_anyone() -> None:
    async def admin(sys, target):  # noqa: ANN001
        await sys.nice(4, pid=target)
        await sys.kill(target, "by admin")
        return await sys.wait(target)

    async with llmos.boot(FakeDriver()) as kernel:
        victim = await kernel.spawn(idle)
        status = result(await spawn_and_wait(kernel, admin, victim.pid, caps={"proc.admin"}))
    assert (status.state, status.reason) == (ProcState.KILLED, "by admin")


async def test_esrch_comes_before_eperm() -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.kill(424242))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main, caps=()))
    assert type(err) is NoSuchProcess


# -- suspend / resume ------------------------------------------------------------------------------
async def test_suspending_yourself_is_einval() -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.suspend(sys.pid))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is InvalidRequest and "cannot suspend itself" in err.message


async def test_resume_of_a_running_child_is_invalid_state() -> None:
    async def parent(sys):  # noqa: ANN001
        child = await sys.spawn(idle)
        err = await caught(sys.resume(child.pid))
        await sys.kill(child.pid)
        return err

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, parent))
    assert type(err) is InvalidState
    assert err.code is Errno.EINVAL
    assert "not suspended" in err.message


async def test_suspend_and_resume_a_child() -> None:
    ticks: list[int] = []

    async def ticker(sys):  # noqa: ANN001
        for i in range(10_000):
            await sys.sleep(0.002)
            ticks.append(i)

    async def parent(sys):  # noqa: ANN001
        child = await sys.spawn(ticker)
        while len(ticks) < 3:
            await sys.sleep(0.002)
        before = len(ticks)  # read with no yield before the suspension takes effect
        await sys.suspend(child.pid)
        state = [p.state for p in await sys.ps() if p.pid == child.pid]
        while len(ticks) == before:  # the child's sleep in flight ends; its next call is held
            await sys.sleep(0.002)
        frozen = len(ticks)
        await sys.sleep(0.05)  # the parent's own time: twenty-five of the child's ticks
        still = len(ticks)
        await sys.resume(child.pid)
        while len(ticks) == still:
            await sys.sleep(0.002)
        await sys.kill(child.pid)
        return state, frozen - before, still - before, len(ticks) - before

    async with llmos.boot(FakeDriver()) as kernel:
        state, frozen, still, after = result(await spawn_and_wait(kernel, parent))
    assert state == [ProcState.SUSPENDED]
    assert frozen == still == 1  # only the call in flight when it was suspended completed
    assert after > still


# -- nice, ps, getpid, sleep --------------------------------------------------------------------------
async def test_nice_yourself_down_but_not_back_up() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.nice(5)
        after = [p.priority for p in await sys.ps() if p.pid == sys.pid]
        err = await caught(sys.nice(0))
        await sys.nice(5)  # staying put is fine
        return after, err

    async with llmos.boot(FakeDriver()) as kernel:
        after, err = result(await spawn_and_wait(kernel, main, caps=DEFAULT_APP_CAPS))
    assert after == [5]
    assert type(err) is PermissionDenied and err.code is Errno.EPERM


@pytest.mark.parametrize("priority", [-21, 20])
async def test_nice_out_of_range_is_einval(priority: int) -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.nice(priority))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is InvalidRequest


async def test_nice_a_child() -> None:
    async def parent(sys):  # noqa: ANN001
        child = await sys.spawn(idle)
        await sys.nice(12, pid=child.pid)
        priority = [p.priority for p in await sys.ps() if p.pid == child.pid]
        err = await caught(sys.nice(-3, pid=child.pid))  # above the parent's own 0
        await sys.kill(child.pid)
        return priority, err

    async with llmos.boot(FakeDriver()) as kernel:
        priority, err = result(await spawn_and_wait(kernel, parent, caps=DEFAULT_APP_CAPS))
    assert priority == [12]
    assert type(err) is PermissionDenied


async def test_ps_lists_live_processes_and_optionally_ended_ones() -> None:
    async def quick(sys):  # noqa: ANN001
        return None

    async def main(sys):  # noqa: ANN001
        ended = await sys.spawn(quick, name="ended-one")
        while any(p.pid == ended.pid for p in await sys.ps()):
            await sys.sleep(0.002)
        live = await sys.ps()
        everything = await sys.ps(include_ended=True)
        return [p.name for p in live], {p.name: p.state for p in everything}

    async with llmos.boot(FakeDriver()) as kernel:
        other = await kernel.spawn(idle, name="other")
        live, everything = result(await spawn_and_wait(kernel, main, name="me"))
        kernel.kill(other.pid)
    assert live == ["other", "me"]
    assert everything == {"other": ProcState.BLOCKED, "me": ProcState.RUNNING, "ended-one": ProcState.EXITED}


async def test_getpid_and_the_handle_agree() -> None:
    async def main(sys):  # noqa: ANN001
        return await sys.getpid(), sys.pid, sys.name, await sys.syscall(GetPid())

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main, name="who")
        assert result(await kernel.wait(info.pid)) == (info.pid, info.pid, "who", info.pid)


async def test_sleep_sleeps_and_rejects_negative_seconds() -> None:
    async def main(sys):  # noqa: ANN001
        began = time.perf_counter()
        await sys.sleep(0.05)
        return time.perf_counter() - began, await caught(sys.sleep(-0.1))

    async with llmos.boot(FakeDriver()) as kernel:
        slept, err = result(await spawn_and_wait(kernel, main))
    assert 0.045 <= slept < 0.5
    assert type(err) is InvalidRequest and err.code is Errno.EINVAL


async def test_set_status_is_shown_by_ps_as_one_line_until_cleared() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.set_status("step 1/10\nloss  2.5")
        mine = [p for p in await sys.ps() if p.pid == sys.pid][0]
        too_long = await caught(sys.set_status("x" * 201))
        await sys.set_status("")
        cleared = [p for p in await sys.ps() if p.pid == sys.pid][0]
        return mine.status, too_long, cleared.status

    async with llmos.boot(None) as kernel:
        said, too_long, cleared = result(await spawn_and_wait(kernel, main))
    assert said == "step 1/10 loss 2.5"
    assert type(too_long) is InvalidRequest and cleared is None
