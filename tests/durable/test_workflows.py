"""Supervision (the `llmos.process` workflow): a durable process with a restart policy runs
again when it ends, as the policy says, at most `max_restarts` times within `within_s`
seconds; past that it is FAILED and its parent is told. One killed on purpose is never
restarted."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import llmos
from llmos.syscalls import DurableInfo, DurableState, ExitStatus, ProcState, RestartPolicy
from llmos.testing import FakeDriver, result, spawn_and_wait, until_state

BOOT: dict[str, Any] = {"memory": None, "mcp_servers": None, "embedder": None}

# Each run appends a line to `runs` (a side effect outside any syscall: every run makes it),
# makes one syscall, then fails (or exits) as told; `fail_runs` runs fail, the later ones exit.
RUNNER = """
async def main(sys, runs, fail_runs=1000, pause=0.0, result="done"):
    with open(runs, "a") as out:
        out.write("run\\n")
    n = sum(1 for _ in open(runs))
    await sys.sleep(pause)
    if n <= fail_runs:
        raise RuntimeError(f"boom {n}")
    return result
"""


def boot(**options: Any) -> AbstractAsyncContextManager[llmos.Kernel]:
    return llmos.boot(FakeDriver(), **{**BOOT, **options})


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def supervised(apps: Any, log: Path, *args: Any, policy: RestartPolicy) -> tuple[ExitStatus, DurableInfo]:
    """RUNNER(log, *args) under `policy`, to its end: how it ended, and how `info` describes it."""
    ref = apps.write("runner", RUNNER)
    async with boot() as kernel:
        info = await kernel.spawn(ref, str(log), *args, restart=policy)
        assert info.durable_id  # supervision makes it durable
        status = await kernel.durability.wait(info.durable_id, timeout=20)
        return status, await kernel.durability.info(info.durable_id)


async def test_on_failure_restarts_a_failing_process_then_gives_up(apps, tmp_path) -> None:
    log = tmp_path / "runs.txt"
    status, described = await supervised(apps, log, policy=RestartPolicy(restart="on-failure", max_restarts=2,
                                                                         within_s=60))
    assert runs(log) == 3  # the first run and two restarts
    assert status.state is ProcState.FAILED
    assert status.reason == "restarted 2 times within 60 s, and ended again: RuntimeError: boom 3"
    assert described.state is DurableState.FAILED
    assert described.reason == status.reason
    assert described.restarts == 2
    assert described.steps == 1  # of its current (last) run


async def test_on_failure_stops_restarting_once_a_run_succeeds(apps, tmp_path) -> None:
    log = tmp_path / "runs.txt"
    status, described = await supervised(apps, log, 2, policy=RestartPolicy(restart="on-failure", max_restarts=5))
    assert result(status) == "done"
    assert runs(log) == 3
    assert described.state is DurableState.EXITED
    assert described.restarts == 2


async def test_on_failure_does_not_restart_a_process_that_exits(apps, tmp_path) -> None:
    log = tmp_path / "runs.txt"
    status, described = await supervised(apps, log, 0, policy=RestartPolicy(restart="on-failure"))
    assert result(status) == "done"
    assert runs(log) == 1
    assert described.restarts == 0


async def test_always_restarts_a_process_that_exits(apps, tmp_path) -> None:
    log = tmp_path / "runs.txt"
    status, described = await supervised(apps, log, 0, policy=RestartPolicy(restart="always", max_restarts=1))
    assert runs(log) == 2
    assert status.state is ProcState.FAILED
    assert status.reason == "restarted 1 times within 60 s, and ended again: exited"
    assert described.restarts == 1


async def test_restarts_count_only_within_the_window(apps, tmp_path) -> None:
    """Runs that fail 0.4 s apart never have two failures within 0.3 s: max_restarts=1 does
    not stop them, and the fourth run's success ends it."""
    log = tmp_path / "runs.txt"
    policy = RestartPolicy(restart="on-failure", max_restarts=1, within_s=0.3)
    status, described = await supervised(apps, log, 3, 0.4, policy=policy)
    assert result(status) == "done"
    assert runs(log) == 4
    assert described.restarts == 3


async def test_a_process_killed_on_purpose_is_not_restarted(apps, tmp_path) -> None:
    ref = apps.write("runner", RUNNER)
    log = tmp_path / "runs.txt"
    async with boot() as kernel:
        info = await kernel.spawn(ref, str(log), 0, 30, restart=RestartPolicy(restart="always", max_restarts=5))
        await until_state(kernel, info.pid, ProcState.BLOCKED, timeout=10)
        kernel.kill(info.pid, "enough")
        status = await kernel.durability.wait(info.durable_id, timeout=20)
        described = await kernel.durability.info(info.durable_id)
    assert status.state is ProcState.KILLED and status.reason == "enough"
    assert runs(log) == 1
    assert described.state is DurableState.KILLED
    assert described.reason == "enough"
    assert described.restarts == 0


def parent_of_a_failing_worker(apps: Any, log: Path, restart: str, returns: str) -> str:
    """An app that spawns RUNNER (always failing) under `restart` (a dict literal), waits
    for a message, and returns `returns` (an expression of `info` and `message`)."""
    child = apps.write("runner", RUNNER)
    return apps.write("parent", f"""
        async def main(sys):
            info = await sys.spawn({child!r}, {str(log)!r}, name="worker", restart={restart})
            message = await sys.recv(timeout=20)
            return {returns}
    """)


async def test_a_process_whose_supervised_child_gives_up_gets_a_message(apps, tmp_path) -> None:
    log = tmp_path / "runs.txt"
    parent = parent_of_a_failing_worker(apps, log, '{"restart": "on-failure", "max_restarts": 1, "within_s": 60}',
                                        "[info.durable_id, message.sender, message.payload]")
    async with boot() as kernel:
        durable_id, sender, payload = result(await spawn_and_wait(kernel, parent, timeout=30))
    assert runs(log) == 2
    assert sender == 0  # from the kernel
    assert payload == {"event": "durable.failed", "durable_id": durable_id, "name": "worker",
                       "reason": "restarted 1 times within 60 s, and ended again: RuntimeError: boom 2"}


async def test_a_durable_parent_is_told_too(apps, tmp_path) -> None:
    log = tmp_path / "runs.txt"
    parent = parent_of_a_failing_worker(apps, log, '{"restart": "on-failure", "max_restarts": 0}',
                                        "[info.durable_id, message.payload]")
    async with boot() as kernel:
        info = await kernel.spawn(parent, durable=True)
        child_id, payload = result(await kernel.durability.wait(info.durable_id, timeout=30))
    assert runs(log) == 1
    assert payload["event"] == "durable.failed" and payload["durable_id"] == child_id


async def test_a_failure_without_a_policy_tells_nobody(apps, tmp_path) -> None:
    """Only giving up after restarts is announced; a process that just fails is its
    parent's to `durable.wait` for, as with an ordinary child."""
    child = apps.write("runner", RUNNER)
    log = tmp_path / "runs.txt"
    parent = apps.write("parent", f"""
        from llmos.syscalls import Timeout

        async def main(sys):
            info = await sys.spawn({child!r}, {str(log)!r}, durable=True)
            status = await sys.durable.wait(info.durable_id, timeout=20)
            try:
                await sys.recv(timeout=0.3)
            except Timeout:
                return status.reason
    """)
    async with boot() as kernel:
        assert result(await spawn_and_wait(kernel, parent, timeout=30)) == "RuntimeError: boom 1"


def test_restart_policies_are_checked() -> None:
    for bad in ({"restart": "sometimes"}, {"max_restarts": -1}, {"within_s": 0}, {"oops": 1}):
        with pytest.raises(ValidationError):
            RestartPolicy(**bad)
    assert RestartPolicy().wants_restart(ProcState.FAILED) is False
    assert RestartPolicy(restart="on-failure").wants_restart(ProcState.EXITED) is False
    assert RestartPolicy(restart="always").wants_restart(ProcState.KILLED) is False


async def test_a_restarted_process_that_crashes_resumes_its_current_run(apps, crashed_kernel, tmp_path) -> None:
    """The supervisor's record says which run is current: after a crash, the run that was
    going on resumes (no new run starts, the restarts already made still count)."""
    ref = apps.write("crashy", """
        import os

        async def main(sys, runs):
            with open(runs, "a") as out:
                out.write("run\\n")
            n = sum(1 for _ in open(runs))
            await sys.sleep(0)
            if n == 1:
                raise RuntimeError("first run fails")
            if os.environ.get("LLMOS_TEST_CRASH"):
                os._exit(9)
            return n
    """)
    log = tmp_path / "runs.txt"
    durable_id = crashed_kernel(ref, str(log), restart={"restart": "on-failure", "max_restarts": 3})
    assert runs(log) == 2
    async with boot() as kernel:
        status = await kernel.durability.wait(durable_id, timeout=20)
        described = await kernel.durability.info(durable_id)
    assert result(status) == 3  # the second run, resumed: its app body ran a third time
    assert runs(log) == 3
    assert described.restarts == 1
    assert described.state is DurableState.EXITED
