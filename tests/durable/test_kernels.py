"""Kernels that share one durable database (here: two OS processes over one LLMOS_HOME): a
running kernel takes over the durable processes of one that dies, leaves alone those of
one that lives, and can cancel them there."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
import pytest

import llmos
from llmos.kernel import params
from llmos.syscalls import DurableState, InvalidState, ProcState
from llmos.testing import FakeDriver, result, until_async

BOOT: dict[str, Any] = {"memory": None, "mcp_servers": None, "embedder": None}

SLEEPER = """
import os

async def main(sys, rounds, seconds, crash_after=-1):
    for i in range(rounds):
        await sys.sleep(seconds)
        if i == crash_after and os.environ.get("LLMOS_TEST_CRASH"):
            os._exit(9)
    return rounds
"""


async def test_a_running_kernel_takes_over_the_work_of_a_kernel_that_dies(apps, crashed_kernel) -> None:
    ref = apps.write("sleeper", SLEEPER)
    async with llmos.boot(FakeDriver(), **BOOT) as kernel:
        assert await kernel.durability.list() == []  # DBOS runs here from now on
        durable_id = await anyio.to_thread.run_sync(lambda: crashed_kernel(ref, 10, 0.01, 4))

        async def taken_over() -> bool:
            return durable_id in kernel.durability.resumed

        await until_async(taken_over, timeout=params.DURABLE_MONITOR_S * 3 + 5)
        status = await kernel.durability.wait(durable_id, timeout=20)
        described = await kernel.durability.info(durable_id)
    assert result(status) == 10
    assert described.state is DurableState.EXITED
    assert described.steps == 10


async def test_a_live_kernels_durable_process_is_left_to_it_and_can_be_cancelled_from_here(
        apps, crashed_kernel) -> None:
    ref = apps.write("sleeper", SLEEPER)
    other = crashed_kernel.start(ref, 2000, 0.01, crash=False, timeout=60)
    durable_id = await anyio.to_thread.run_sync(other.durable_id)
    async with llmos.boot(FakeDriver(), **BOOT) as kernel:
        assert kernel.durability.resumed == []  # its kernel lives
        there = await kernel.durability.info(durable_id)
        assert there.state is DurableState.RUNNING
        assert there.pid is None  # no process of this kernel runs it
        assert there.kernel and str(other.child.pid) in there.kernel
        with pytest.raises(InvalidState, match="running"):
            await kernel.durability.resume(durable_id)

        await kernel.durability.cancel(durable_id)
        assert (await kernel.durability.info(durable_id)).state is DurableState.CANCELLED
        code = await anyio.to_thread.run_sync(other.wait, params.DURABLE_MONITOR_S * 3 + 10)
        await anyio.sleep(params.DURABLE_MONITOR_S + 0.5)
        assert kernel.durability.resumed == []  # cancelled, so nobody resumes it
        assert kernel.ps(include_ended=True) == []
        status = await kernel.durability.wait(durable_id, timeout=5)
    assert code == 0, other.output[-4000:]
    assert "ENDED KILLED cancelled" in other.output, other.output[-4000:]  # the other kernel stopped it
    assert status.state is ProcState.KILLED and status.reason == "cancelled"
