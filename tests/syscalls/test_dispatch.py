"""The one path every syscall takes: resolve (ENOSYS/EINVAL), admit (EPERM/EDQUOT), run, account, trace."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import pytest

import llmos
import llmos.kernel.errors as kernel_errors
from llmos.kernel.abi import Request
from llmos.kernel.stats import TraceEvent
from llmos.syscalls import (
    TABLE,
    Errno,
    GetPid,
    InvalidRequest,
    PermissionDenied,
    QuotaExceeded,
    Quotas,
    Sleep,
    SyscallError,
    UnknownSyscall,
)
from llmos.testing import FakeDriver, caught, result, spawn_and_wait, until_state


async def finished_info(kernel: llmos.Kernel, pid: int):  # noqa: ANN201
    """The ended process's snapshot, read before anyone reaps it."""
    return await until_state(kernel, pid, timeout=5)


class NotInTheTable(Request):
    call: ClassVar[str] = "teleport"


# -- resolve -----------------------------------------------------------------------------------------
async def test_a_dict_naming_an_unknown_call_is_enosys() -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.syscall({"call": "fork_bomb", "n": 1}))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is UnknownSyscall
    assert err.code is Errno.ENOSYS
    assert "'fork_bomb'" in err.message
    for known in ("chat", "generate", "spawn", "wait", "kill", "send", "recv", "ps", "getpid", "sleep"):
        assert f"'{known}'" in err.message


@pytest.mark.parametrize("request_", [{}, {"call": None}, {"call": 7}, {"seconds": 1}])
async def test_a_dict_without_a_call_name_is_enosys(request_: dict[str, Any]) -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.syscall(request_))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is UnknownSyscall


async def test_a_request_type_without_a_handler_is_enosys() -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.syscall(NotInTheTable()))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is UnknownSyscall
    assert "'teleport'" in err.message


async def error_of(request_: Any) -> Any:
    """What a process gets back for issuing `request_`."""
    async def main(sys):  # noqa: ANN001
        return await caught(sys.syscall(request_))

    async with llmos.boot(FakeDriver()) as kernel:
        return result(await spawn_and_wait(kernel, main))


@pytest.mark.parametrize("request_", [42, "getpid", None, ["getpid"], object(), GetPid])
async def test_a_non_request_object_is_einval(request_: Any) -> None:
    err = await error_of(request_)
    assert type(err) is InvalidRequest
    assert err.code is Errno.EINVAL
    assert "a syscall is a request object or a dict" in err.message


@pytest.mark.parametrize(("request_", "where"), [
    ({"call": "sleep", "seconds": "soon"}, "seconds"),
    ({"call": "sleep"}, "seconds"),
    ({"call": "kill", "pid": "one"}, "pid"),
    ({"call": "getpid", "extra": 1}, "extra"),
    ({"call": "ps", "include_ended": "maybe"}, "include_ended"),
    ({"call": "recv", "timeout": [1]}, "timeout"),
    ({"call": "wait", "pid": 1.5}, "pid"),
])
async def test_malformed_arguments_are_einval_and_name_the_field(request_: dict[str, Any], where: str) -> None:
    err = await error_of(request_)
    assert type(err) is InvalidRequest
    assert err.code is Errno.EINVAL
    assert f"bad arguments to '{request_['call']}'" in err.message
    assert where in err.message


async def test_bad_spawn_args_field_is_einval() -> None:
    async def app(sys):  # noqa: ANN001
        return None

    async def main(sys):  # noqa: ANN001
        return await caught(sys.syscall({"call": "spawn", "app": app, "args": 5}))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is InvalidRequest and "args" in err.message


async def test_request_objects_and_dicts_are_the_same_call() -> None:
    async def main(sys):  # noqa: ANN001
        return (await sys.syscall(GetPid()), await sys.syscall({"call": "getpid"}),
                await sys.syscall(Sleep(seconds=0)))

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main)
        assert result(await kernel.wait(info.pid)) == (info.pid, info.pid, None)


def test_requests_are_frozen_and_forbid_extra_fields() -> None:
    request = Sleep(seconds=1)
    with pytest.raises(Exception):
        request.seconds = 2  # type: ignore[misc]
    with pytest.raises(Exception):
        Sleep(seconds=1, nap=True)  # type: ignore[call-arg]


def test_the_table_knows_every_family() -> None:
    assert set(TABLE.by_name) >= {"spawn", "wait", "kill", "suspend", "resume", "nice", "ps", "getpid", "sleep",
                                  "send", "recv", "subscribe", "unsubscribe", "publish", "chat", "generate",
                                  "write", "ask_user"}


# -- admit -------------------------------------------------------------------------------------------
async def test_a_malformed_call_is_einval_even_without_the_capability() -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.syscall({"call": "send", "payload": 1}))  # no "to"

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main, caps=()))
    assert type(err) is InvalidRequest


async def test_a_denied_call_is_eperm_and_is_not_charged() -> None:
    async def main(sys):  # noqa: ANN001
        err = await caught(sys.send(sys.pid, 1))
        me = [p for p in await sys.ps() if p.pid == sys.pid][0]
        return err, me.stats.syscalls

    async with llmos.boot(FakeDriver()) as kernel:
        err, syscalls = result(await spawn_and_wait(kernel, main, caps={"proc.spawn"}))
    assert type(err) is PermissionDenied
    assert err.code is Errno.EPERM
    assert str(err).startswith("[EPERM] ")
    assert syscalls == 1  # only the ps call


async def test_calls_without_a_capability_work_for_everyone() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.sleep(0)
        return await sys.getpid(), len(await sys.ps())

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main, caps=())
        assert result(await kernel.wait(info.pid)) == (info.pid, 1)


async def test_syscall_quota_counts_every_admitted_call() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.getpid()
        await sys.sleep(0)
        await caught(sys.syscall({"call": "nope"}))  # unknown: refused before admission, not charged
        await sys.ps()
        return await caught(sys.getpid())

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main, quotas=Quotas(max_syscalls=3)))
    assert type(err) is QuotaExceeded
    assert err.code is Errno.EDQUOT


# -- errors ------------------------------------------------------------------------------------------
def test_every_error_is_a_syscall_error_with_its_errno() -> None:
    expected = {
        "InvalidRequest": Errno.EINVAL, "UnknownSyscall": Errno.ENOSYS, "PermissionDenied": Errno.EPERM,
        "NoSuchProcess": Errno.ESRCH, "AmbiguousName": Errno.ENOTUNIQ, "QuotaExceeded": Errno.EDQUOT,
        "Timeout": Errno.ETIMEDOUT, "MailboxFull": Errno.EAGAIN, "ContextOverflow": Errno.E2BIG,
        "ModelError": Errno.EIO, "InvalidState": Errno.EINVAL, "TooManyProcesses": Errno.EAGAIN,
    }
    import llmos.syscalls as abi

    for name, code in expected.items():
        cls = getattr(abi, name)
        assert cls is getattr(kernel_errors, name)
        assert issubclass(cls, SyscallError)
        err = cls("something went wrong")
        assert err.code is code
        assert str(err) == f"[{code.name}] something went wrong"
        assert err.message == "something went wrong"
    assert not issubclass(kernel_errors.ConfigError, SyscallError)


# -- trace ---------------------------------------------------------------------------------------------
async def test_trace_records_each_call_with_its_outcome() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.getpid()
        await caught(sys.kill(123456))
        await caught(sys.recv(timeout=0.01))
        await caught(sys.syscall({"call": "nope"}))
        await caught(sys.syscall(GetPid))
        await caught(sys.send(sys.pid, object()))
        await caught(sys.spawn(main))

    async with llmos.boot(FakeDriver()) as kernel:
        before = time.time()
        info = await kernel.spawn(main, caps={"ipc"})
        result(await kernel.wait(info.pid))
        events = [e for e in kernel.trace if e.pid == info.pid]
    assert all(isinstance(e, TraceEvent) for e in events)
    assert [(e.call, e.outcome) for e in events] == [
        ("getpid", "ok"), ("kill", "ESRCH"), ("recv", "ETIMEDOUT"), ("nope", "ENOSYS"), ("getpid", "EINVAL"),
        ("send", "EINVAL"), ("spawn", "EPERM"),
    ]
    assert all(e.duration_s >= 0 for e in events)
    assert events[2].duration_s >= 0.009  # the recv waited for its timeout
    assert all(before <= e.at <= time.time() for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)


async def test_trace_records_quota_refusals() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.getpid()
        await caught(sys.getpid())

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main, quotas=Quotas(max_syscalls=1))
        result(await kernel.wait(info.pid))
        outcomes = [e.outcome for e in kernel.trace if e.pid == info.pid]
    assert outcomes == ["ok", "EDQUOT"]


async def test_trace_names_a_malformed_dict_call() -> None:
    async def main(sys):  # noqa: ANN001
        await caught(sys.sleep(-1))

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main)
        result(await kernel.wait(info.pid))
        events = [(e.call, e.outcome) for e in kernel.trace if e.pid == info.pid]
    assert events == [("sleep", "EINVAL")]


# -- accounting ------------------------------------------------------------------------------------------
async def test_stats_count_syscalls_tokens_and_time() -> None:
    driver = FakeDriver()
    driver.enqueue("one two three", "four five")

    async def main(sys):  # noqa: ANN001
        await sys.getpid()
        await sys.sleep(0.03)
        a = await sys.chat("hi")
        b = await sys.generate("xyz")
        return a, b

    async with llmos.boot(driver) as kernel:
        info = await kernel.spawn(main)
        ended = await finished_info(kernel, info.pid)
        a, b = result(await kernel.wait(info.pid))
    stats = ended.stats
    assert stats.syscalls == 4
    assert stats.prompt_tokens == a.prompt_tokens + b.prompt_tokens == len("<user>hi\n<assistant>") + 3
    assert stats.completion_tokens == a.completion_tokens + b.completion_tokens == 5
    assert stats.tokens == stats.prompt_tokens + stats.completion_tokens
    assert stats.syscall_time_s >= 0.03
    assert stats.generation_time_s > 0
    assert ended.runtime_s >= 0.03


async def test_failed_calls_are_counted_but_charge_no_tokens() -> None:
    driver = FakeDriver(context_length=30)

    async def main(sys):  # noqa: ANN001
        await caught(sys.chat("x" * 50))  # E2BIG: admitted and counted, but no tokens
        await caught(sys.kill(99999))

    async with llmos.boot(driver) as kernel:
        info = await kernel.spawn(main)
        ended = await finished_info(kernel, info.pid)
        await kernel.wait(info.pid)
    assert ended.stats.syscalls == 2
    assert ended.stats.tokens == 0


async def test_stats_are_per_process() -> None:
    driver = FakeDriver()

    async def talker(sys):  # noqa: ANN001
        await sys.chat("hello")

    async def quiet(sys):  # noqa: ANN001
        await sys.getpid()

    async with llmos.boot(driver) as kernel:
        t = await kernel.spawn(talker)
        q = await kernel.spawn(quiet)
        t_info = await finished_info(kernel, t.pid)
        q_info = await finished_info(kernel, q.pid)
    assert t_info.stats.syscalls == 1 and t_info.stats.completion_tokens == 2  # "echo: hello"
    assert q_info.stats.syscalls == 1 and q_info.stats.tokens == 0


async def test_a_loop_of_cheap_syscalls_does_not_starve_siblings() -> None:
    ticks: list[float] = []
    spun: list[float] = []

    async def spinner(sys):  # noqa: ANN001
        end = time.perf_counter() + 10  # a bound; it stops as soon as the ticker is done
        calls = 0
        while len(ticks) < 5 and time.perf_counter() < end:
            await sys.getpid()
            calls += 1
        spun.append(time.perf_counter())
        return calls

    async def ticker(sys):  # noqa: ANN001
        for _ in range(5):
            await sys.sleep(0.005)
            ticks.append(time.perf_counter())

    async with llmos.boot(FakeDriver()) as kernel:
        s = await kernel.spawn(spinner)
        t = await kernel.spawn(ticker)
        result(await kernel.wait(t.pid))
        calls = result(await kernel.wait(s.pid))
    assert len(ticks) == 5
    assert ticks[-1] <= spun[0] < ticks[-1] + 5  # the ticker finished while the spinner spun, well before its bound
    assert calls > 100
