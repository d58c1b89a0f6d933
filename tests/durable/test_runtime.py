"""Durable processes from spawn to their end on one kernel: the record and what `durability`
says of it, waiting, refusals, cancelling, and a clean shutdown that leaves them unfinished
for the next boot."""

from __future__ import annotations

import logging
import re
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

import llmos
from llmos.home import llmos_home
from llmos.syscalls import (
    DurabilityUnavailable,
    DurableState,
    InvalidRequest,
    InvalidState,
    ModelNotServed,
    NoSuchDurableProcess,
    ProcState,
    RestartPolicy,
    Timeout,
)
from llmos.testing import FakeDriver, FakeLoader, process_info, result, spawn_and_wait, until_async, until_state

BOOT: dict[str, Any] = {"memory": None, "mcp_servers": None, "embedder": None}

COUNTER = """
async def main(sys, n):
    await sys.write("start")
    total = 0
    for i in range(n):
        await sys.sleep(0)
        total += i
    pid = await sys.getpid()
    return {"total": total, "pid": pid}
"""

# Sleeps `rounds` times (one syscall each), then says how many rounds it made.
SLEEPER = """
async def main(sys, rounds, seconds=0.05):
    for _ in range(rounds):
        await sys.sleep(seconds)
    return rounds
"""


def boot(driver: Any = None, **options: Any) -> AbstractAsyncContextManager[llmos.Kernel]:
    return llmos.boot(driver if driver is not None else FakeDriver(), **{**BOOT, **options})


async def steps_at_least(kernel: llmos.Kernel, durable_id: str, n: int) -> None:
    async def reached() -> bool:
        return (await kernel.durability.info(durable_id)).steps >= n

    await until_async(reached, timeout=10)


# -- running to the end ---------------------------------------------------------------------------
async def test_a_durable_process_runs_to_its_end_and_its_record_counts_its_syscalls(apps) -> None:
    ref = apps.write("counter", COUNTER)
    async with boot() as kernel:
        info = await kernel.spawn(ref, 4, durable=True)
        assert re.fullmatch(r"[0-9a-f]{12}", info.durable_id or "")
        assert info.name == "main"
        status = await kernel.durability.wait(info.durable_id, timeout=10)
        assert status.state is ProcState.EXITED
        assert status.result == {"total": 6, "pid": info.pid}
        described = await kernel.durability.info(info.durable_id)
        listed = await kernel.durability.list()
        assert kernel.durability.resumed == []
    assert described.state is DurableState.EXITED
    assert described.steps == 1 + 4 + 1  # write, four sleeps, getpid
    assert described.restarts == 0
    assert described.app == ref  # already absolute
    assert described.name == "main"
    assert described.pid is None  # ended: no kernel runs it
    assert described.reason is None
    assert described.kernel
    assert [d.id for d in listed] == [info.durable_id]


async def test_a_durable_process_is_a_process_of_its_kernel_while_it_runs(apps) -> None:
    ref = apps.write("sleeper", SLEEPER)
    async with boot() as kernel:
        info = await kernel.spawn(ref, 200, durable=True, name="napper")
        running = process_info(kernel, info.pid)
        assert running.durable_id == info.durable_id
        assert running.name == "napper"
        await steps_at_least(kernel, info.durable_id, 1)
        described = await kernel.durability.info(info.durable_id)
        assert described.state is DurableState.RUNNING
        assert described.pid == info.pid
        assert described.name == "napper"
        kernel.kill(info.pid)
        status = await kernel.durability.wait(info.durable_id, timeout=10)
    assert status.state is ProcState.KILLED


async def test_each_durable_spawn_gets_its_own_id_and_list_shows_newest_first(apps) -> None:
    ref = apps.write("counter", COUNTER)
    async with boot() as kernel:
        ids = []
        for n in (1, 2, 3):
            info = await kernel.spawn(ref, n, durable=True)
            ids.append(info.durable_id)
            result_ = await kernel.durability.wait(info.durable_id, timeout=10)
            assert result_.result["total"] == n * (n - 1) // 2
            await anyio.sleep(0.01)
        listed = await kernel.durability.list()
    assert len(set(ids)) == 3
    assert sorted(d.id for d in listed) == sorted(ids)
    assert {d.id: d.steps for d in listed} == {ids[0]: 3, ids[1]: 4, ids[2]: 5}


async def test_keyword_arguments_and_a_failing_app(apps) -> None:
    ref = apps.write("kw", """
        async def main(sys, a, *, b=0, fail=False):
            await sys.sleep(0)
            if fail:
                raise ValueError(f"asked to fail with {a + b}")
            return a + b
    """)
    async with boot() as kernel:
        ok = await kernel.spawn_durable(ref, (1,), kwargs={"b": 2})
        bad = await kernel.spawn_durable(ref, (1,), kwargs={"b": 2, "fail": True})
        ok_status = await kernel.durability.wait(ok.durable_id, timeout=10)
        bad_status = await kernel.durability.wait(bad.durable_id, timeout=10)
        bad_info = await kernel.durability.info(bad.durable_id)
    assert result(ok_status) == 3
    assert bad_status.state is ProcState.FAILED
    assert bad_status.reason == "ValueError: asked to fail with 3"
    assert "ValueError" in (bad_status.traceback or "")
    assert bad_info.state is DurableState.FAILED
    assert bad_info.reason == "ValueError: asked to fail with 3"
    assert bad_info.restarts == 0  # the default policy: never


async def test_a_syscall_error_is_recorded_and_reaches_the_app(apps) -> None:
    ref = apps.write("errs", """
        from llmos.syscalls import NoSuchProcess, NoConsole

        async def main(sys):
            caught = []
            try:
                await sys.wait(4242)
            except NoSuchProcess as exc:
                caught.append(type(exc).__name__)
            try:
                await sys.ask_user("anyone?")
            except NoConsole as exc:
                caught.append(type(exc).__name__)
            return caught
    """)
    async with boot() as kernel:
        info = await kernel.spawn(ref, durable=True)
        status = await kernel.durability.wait(info.durable_id, timeout=10)
        described = await kernel.durability.info(info.durable_id)
    assert result(status) == ["NoSuchProcess", "NoConsole"]
    assert described.steps == 2


async def test_wait_times_out_and_unknown_ids_are_esrch(apps) -> None:
    ref = apps.write("sleeper", SLEEPER)
    async with boot() as kernel:
        info = await kernel.spawn(ref, 200, durable=True)
        with pytest.raises(Timeout):
            await kernel.durability.wait(info.durable_id, timeout=0.2)
        for call in (kernel.durability.info, kernel.durability.wait, kernel.durability.resume,
                     kernel.durability.cancel):
            with pytest.raises(NoSuchDurableProcess):
                await call("0123456789ab")
        kernel.kill(info.pid)
        assert (await kernel.durability.wait(info.durable_id, timeout=10)).state is ProcState.KILLED


async def test_a_process_spawns_a_durable_child_and_waits_for_it_by_durable_id(apps) -> None:
    child = apps.write("counter", COUNTER)
    parent = apps.write("parent", f"""
        async def main(sys):
            info = await sys.spawn({child!r}, 3, durable=True, name="child")
            status = await sys.durable.wait(info.durable_id, timeout=10)
            return [info.durable_id, info.ppid == sys.pid, status.result["total"]]
    """)
    async with boot() as kernel:
        status = await spawn_and_wait(kernel, parent, timeout=20)
        durable_id, is_child, total = result(status)
        described = await kernel.durability.info(durable_id)
    assert is_child and total == 3
    assert described.name == "child" and described.state is DurableState.EXITED


async def test_processes_ask_about_durable_ones_with_syscalls(apps) -> None:
    sleeper = apps.write("sleeper", SLEEPER)
    asker = apps.write("asker", """
        from llmos.syscalls import PermissionDenied

        async def main(sys, durable_id):
            listed = [d.id for d in await sys.durable.ps()]
            info = await sys.durable.info(durable_id)
            try:
                await sys.durable.cancel(durable_id)
                cancel = "allowed"
            except PermissionDenied:
                cancel = "EPERM"
            return [listed, info.state.value, cancel]
    """)
    async with boot() as kernel:
        info = await kernel.spawn(sleeper, 400, durable=True)
        unprivileged = await spawn_and_wait(kernel, asker, info.durable_id, caps=["ipc"], timeout=10)
        assert result(unprivileged) == [[info.durable_id], "running", "EPERM"]
        privileged = await spawn_and_wait(kernel, asker, info.durable_id, timeout=10)
        assert result(privileged) == [[info.durable_id], "running", "allowed"]
        status = await kernel.durability.wait(info.durable_id, timeout=10)
    assert status.state is ProcState.KILLED and status.reason == "cancelled"


# -- refusals -------------------------------------------------------------------------------------
async def test_an_app_that_is_not_importable_by_reference_is_refused(apps) -> None:
    async def local(sys):  # noqa: ANN001
        return 1

    async with boot() as kernel:
        with pytest.raises(InvalidRequest, match="importable by reference"):
            await kernel.spawn(lambda sys: None, durable=True)
        with pytest.raises(InvalidRequest, match="importable by reference"):
            await kernel.spawn(local, durable=True)
        with pytest.raises(InvalidRequest, match="does not exist"):
            await kernel.spawn(str(apps.folder / "missing.py:main"), durable=True)
        assert kernel.ps(include_ended=True) == []
        assert not kernel.durability.started  # nothing was recorded, so DBOS never started


async def test_arguments_that_are_not_json_are_refused(apps) -> None:
    ref = apps.write("counter", COUNTER)
    async with boot() as kernel:
        with pytest.raises(InvalidRequest, match="JSON"):
            await kernel.spawn(ref, object(), durable=True)
        with pytest.raises(InvalidRequest, match="JSON"):
            await kernel.spawn_durable(ref, (), kwargs={"n": object()})
        with pytest.raises(InvalidRequest):  # the app's signature is checked too
            await kernel.spawn(ref, 1, 2, 3, durable=True)
        assert kernel.ps(include_ended=True) == []


async def test_a_kernel_booted_without_durability_refuses_durable_spawns(apps) -> None:
    ref = apps.write("counter", COUNTER)
    parent = apps.write("parent", f"""
        from llmos.syscalls import DurabilityUnavailable

        async def main(sys):
            try:
                await sys.spawn({ref!r}, 1, durable=True)
            except DurabilityUnavailable as exc:
                return exc.code.name
    """)
    async with boot(durable=None) as kernel:
        assert kernel.durability is None
        with pytest.raises(DurabilityUnavailable):
            await kernel.spawn(ref, 1, durable=True)
        with pytest.raises(DurabilityUnavailable):  # supervision makes it durable
            await kernel.spawn(ref, 1, restart=RestartPolicy(restart="on-failure"))
        assert result(await spawn_and_wait(kernel, parent)) == "ENODEV"
        assert result(await spawn_and_wait(kernel, ref, 3)) == {"total": 3, "pid": 2}  # ordinary ones run


async def test_a_durable_database_asked_for_by_name_that_cannot_be_opened_stops_the_boot(apps, tmp_path) -> None:
    """A database named by the caller (a cluster's, here a SQLite file in a folder that
    cannot exist) must work, or the kernel does not come up: a typed DurabilityUnavailable
    (ENODEV) naming the database, not a driver's exception."""
    url = f"sqlite:///{tmp_path / 'not-a-folder.txt' / 'system.sqlite'}"
    (tmp_path / "not-a-folder.txt").write_text("a file, so no database can be made under it")
    with pytest.raises(DurabilityUnavailable, match="not-a-folder.txt"):
        async with boot(durable=url):
            pass


async def test_an_unusable_embedded_database_leaves_the_kernel_without_durability(apps, tmp_path) -> None:
    """LLMOS_HOME's own database unusable (here its file is a folder): the kernel boots and
    runs ordinary processes; durable spawns are refused with DurabilityUnavailable."""
    ref = apps.write("counter", COUNTER)
    (llmos_home() / "durable" / "system.sqlite").mkdir(parents=True)
    async with boot() as kernel:
        with pytest.raises(DurabilityUnavailable):
            await kernel.spawn(ref, 1, durable=True)
        assert result(await spawn_and_wait(kernel, ref, 2))["total"] == 1


async def test_only_one_kernel_per_python_process_runs_durable_processes(apps) -> None:
    ref = apps.write("counter", COUNTER)
    async with boot() as first:
        info = await first.spawn(ref, 1, durable=True)
        async with boot() as second:
            with pytest.raises(DurabilityUnavailable, match="another kernel"):
                await second.spawn(ref, 1, durable=True)
        assert result(await first.durability.wait(info.durable_id, timeout=10))["total"] == 0


# -- cancel ---------------------------------------------------------------------------------------
async def test_cancel_kills_a_running_durable_process_for_good(apps) -> None:
    ref = apps.write("sleeper", SLEEPER)
    async with boot() as kernel:
        info = await kernel.spawn(ref, 400, durable=True, restart=RestartPolicy(restart="always"))
        await steps_at_least(kernel, info.durable_id, 2)
        await kernel.durability.cancel(info.durable_id)
        ended = await until_state(kernel, info.pid, timeout=10)
        cancelled = await kernel.durability.info(info.durable_id)
        status = await kernel.durability.wait(info.durable_id, timeout=10)
        with pytest.raises(InvalidState):
            await kernel.durability.cancel(info.durable_id)
        assert kernel.durability._runtime.cancel_reasons == {}  # a reason is kept only while its process runs
    assert ended.state is ProcState.KILLED and ended.reason == "cancelled"
    assert cancelled.state is DurableState.CANCELLED
    assert cancelled.restarts == 0  # killed on purpose: never restarted, whatever the policy
    assert status.state is ProcState.KILLED and status.reason == "cancelled"

    async with boot() as kernel:  # the next boot does not resume it
        assert kernel.durability.resumed == []
        await anyio.sleep(0.3)
        assert kernel.ps(include_ended=True) == []
        assert (await kernel.durability.info(info.durable_id)).state is DurableState.CANCELLED


async def test_cancel_of_an_ended_process_is_refused(apps) -> None:
    ref = apps.write("counter", COUNTER)
    async with boot() as kernel:
        info = await kernel.spawn(ref, 1, durable=True)
        await kernel.durability.wait(info.durable_id, timeout=10)
        with pytest.raises(InvalidState, match="ended"):
            await kernel.durability.cancel(info.durable_id)
        with pytest.raises(InvalidState, match="ended"):
            await kernel.durability.resume(info.durable_id)
        assert (await kernel.durability.info(info.durable_id)).state is DurableState.EXITED


async def test_a_cancelled_process_can_be_resumed_on_purpose(apps) -> None:
    ref = apps.write("sleeper", SLEEPER)
    async with boot() as kernel:
        info = await kernel.spawn(ref, 20, 0.02, durable=True)
        await steps_at_least(kernel, info.durable_id, 3)
        await kernel.durability.cancel(info.durable_id)
        await until_state(kernel, info.pid, timeout=10)
        recorded = (await kernel.durability.info(info.durable_id)).steps
        resumed = await kernel.durability.resume(info.durable_id)
        assert resumed.state is not DurableState.CANCELLED
        status = await kernel.durability.wait(info.durable_id, timeout=20)
        done = await kernel.durability.info(info.durable_id)
    assert result(status) == 20
    assert status.pid != info.pid  # a new process, replaying the record
    assert 3 <= recorded < 20
    assert done.state is DurableState.EXITED and done.steps == 20


async def test_cancel_is_quiet(apps) -> None:
    """Cancelling is an ordinary request: DBOS must not log it as an error with a traceback
    (engine.py keeps DBOS quiet about the cancellations llmos makes on purpose)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("dbos")
    logger.addHandler(handler)
    try:
        ref = apps.write("sleeper", SLEEPER)
        async with boot() as kernel:
            info = await kernel.spawn(ref, 400, durable=True)
            await steps_at_least(kernel, info.durable_id, 1)
            await kernel.durability.cancel(info.durable_id)
            await kernel.durability.wait(info.durable_id, timeout=10)
            await anyio.sleep(0.3)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []


# -- a clean shutdown -----------------------------------------------------------------------------
async def test_a_clean_shutdown_leaves_a_durable_process_unfinished_and_the_next_boot_resumes_it(apps) -> None:
    ref = apps.write("sleeper", SLEEPER)
    async with boot() as kernel:
        info = await kernel.spawn(ref, 30, 0.02, durable=True)
        await steps_at_least(kernel, info.durable_id, 3)
    # It was killed as the kernel shut down, yet its record says it is not over.
    async with boot(resume=False) as kernel:
        assert kernel.durability.resumed == []
        left = await kernel.durability.info(info.durable_id)
        assert left.state is DurableState.UNFINISHED
        assert 3 <= left.steps < 30
        assert kernel.ps() == []
    async with boot() as kernel:
        assert kernel.durability.resumed == [info.durable_id]
        status = await kernel.durability.wait(info.durable_id, timeout=20)
        done = await kernel.durability.info(info.durable_id)
    assert result(status) == 30
    assert done.state is DurableState.EXITED
    assert done.steps == 30
    assert done.restarts == 0


async def test_a_clean_shutdown_while_a_process_waits_for_a_durable_child(apps) -> None:
    """A process blocked in `durable.wait` while the kernel shuts down: the kernel's exit
    is not held up by it (DBOS's result polling is cancelled)."""
    child = apps.write("sleeper", SLEEPER)
    parent = apps.write("parent", f"""
        async def main(sys):
            info = await sys.spawn({child!r}, 400, durable=True)
            return await sys.durable.wait(info.durable_id)
    """)
    with anyio.fail_after(15):
        async with boot() as kernel:
            info = await kernel.spawn(parent)
            await until_state(kernel, info.pid, ProcState.BLOCKED, timeout=10)
            await anyio.sleep(0.2)


# -- on a model of its own ------------------------------------------------------------------------------
# Sleeps `rounds` times (a syscall each), then asks its model.
ASKER = """
async def main(sys, rounds):
    for _ in range(rounds):
        await sys.sleep(0.02)
    reply = await sys.chat("hello", max_tokens=8)
    return [reply.text, reply.model]
"""


async def test_a_durable_process_spawned_on_another_model_runs_every_run_there(apps) -> None:
    ref = apps.write("asker", ASKER)
    async with boot(FakeDriver(name="base")) as kernel:
        kernel.models.loader = FakeLoader()
        with pytest.raises(ModelNotServed, match="no-such"):  # refused at spawn: nothing recorded
            await kernel.spawn(ref, 0, durable=True, model="no-such")
        assert await kernel.durability.list() == []
        info = await kernel.spawn(ref, 0, durable=True, model="other")
        assert result(await kernel.durability.wait(info.durable_id, timeout=10)) == ["other says hi", "other"]
        info = await kernel.spawn(ref, 40, durable=True, model="other")
        await steps_at_least(kernel, info.durable_id, 3)
    async with boot(FakeDriver(name="base"), resume=False) as kernel:  # its next run, on a new kernel
        kernel.models.loader = FakeLoader()
        await kernel.durability.resume(info.durable_id)
        assert result(await kernel.durability.wait(info.durable_id, timeout=20)) == ["other says hi", "other"]


async def test_a_durable_child_generates_with_its_parent_s_model(apps) -> None:
    ref = apps.write("asker", ASKER)

    async def parent(sys: Any) -> Any:
        await sys.set_model("other")
        child = await sys.spawn(ref, 0, durable=True)
        return result(await sys.durable.wait(child.durable_id, timeout=10))

    async with boot(FakeDriver(name="base")) as kernel:
        kernel.models.loader = FakeLoader()
        assert result(await spawn_and_wait(kernel, parent, timeout=15)) == ["other says hi", "other"]


async def test_a_run_whose_recorded_model_is_gone_fails_for_good_saying_so(apps) -> None:
    ref = apps.write("asker", ASKER)
    async with boot(FakeDriver(name="base")) as kernel:
        kernel.models.loader = FakeLoader()
        info = await kernel.spawn(ref, 40, durable=True, model="other")
        await steps_at_least(kernel, info.durable_id, 3)
    async with boot(FakeDriver(name="base"), resume=False) as kernel:  # no loader: it serves "base" alone
        kernel.models.loader = None
        await kernel.durability.resume(info.durable_id)
        status = await kernel.durability.wait(info.durable_id, timeout=20)
    assert status.state is ProcState.FAILED and "other" in status.reason


async def test_a_kernel_taken_for_dead_with_no_durable_process_rejoins_without_a_warning(caplog) -> None:
    async with boot() as kernel:
        durability = await kernel.durability.runtime()
        await anyio.to_thread.run_sync(durability.kernels.forget, [durability.executor_id])  # as the others would
        with caplog.at_level(logging.INFO, logger="llmos.durable"):
            await until_async(lambda: anyio.to_thread.run_sync(
                lambda: durability.executor_id in durability.kernels.alive()), timeout=10)
    said = [r for r in caplog.records if "taken for dead" in r.getMessage()]
    assert said and all(r.levelno == logging.INFO and "no durable process" in r.getMessage() for r in said)
