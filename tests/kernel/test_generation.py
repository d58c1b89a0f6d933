"""The generation service on the FakeDriver: one job record from submit to finish, and a
serve loop that wakes on every change the scheduler sees."""

from __future__ import annotations

import anyio

import llmos
from llmos.kernel.process import ProcState
from llmos.testing import FakeDriver, result, until

STORY = " ".join(f"w{i}" for i in range(40))


async def test_a_process_suspended_mid_generation_alone_continues_after_resume() -> None:
    # The serve loop idles while the only job's owner is suspended; resume must wake it.
    driver = FakeDriver(step_delay_s=0.002)
    driver.enqueue(STORY)

    async def talker(sys):  # noqa: ANN001
        return (await sys.chat("tell")).text

    async with llmos.boot(driver, memory=None) as kernel:
        info = await kernel.spawn(talker)
        await until(lambda: bool(driver.jobs) and len(driver.jobs[0].token_ids) >= 3)
        kernel.suspend(info.pid)
        await until(lambda: kernel.scheduler.statistics().running == 0)
        steps = len(driver.batches)
        assert kernel.procs.get(info.pid).state is ProcState.SUSPENDED
        await anyio.sleep(0.05)  # ten steps' time
        assert len(driver.batches) == steps  # nothing runs while it is suspended
        kernel.resume(info.pid)
        status = await kernel.wait(info.pid, timeout=5)
    assert result(status) == STORY


async def test_a_job_is_one_record_from_submit_to_finish() -> None:
    driver = FakeDriver()
    driver.enqueue("one two three")

    async def talker(sys):  # noqa: ANN001
        return await sys.chat("hi")

    async with llmos.boot(driver, memory=None) as kernel:
        reply = result(await kernel.wait((await kernel.spawn(talker)).pid, timeout=5))
        [job] = driver.jobs
        assert not kernel.generation.jobs  # it left when it finished
    assert job.finish_reason == "stop" and job.text == reply.text == "one two three"
    assert job.outbox.done.is_set() and job.first_token_at is not None
    assert reply.first_token_s == job.first_token_at - job.submitted_at
    assert reply.completion_tokens == len(job.token_ids) == 3
