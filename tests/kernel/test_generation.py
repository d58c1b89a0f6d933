"""The generation service: one job record from submit to finish, a serve loop that wakes on
every change the scheduler sees (on the FakeDriver), and bursts of steps that end at the next
change and gather waits only for processes that may still ask (on the tiny real engine)."""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

import llmos
from llmos.kernel import generation, params
from llmos.kernel.generation import Courier
from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams
from llmos.kernel.process import ProcState
from llmos.testing import BurstsOut, FakeDriver, one_torch_thread, result, tiny_driver, until

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


async def test_a_reader_that_leaves_without_a_word_costs_only_its_own_generation() -> None:
    # A job whose reader closed its end (a client that hung up) is cancelled at the next
    # piece; the batch it ran in goes on.
    driver = FakeDriver(step_delay_s=0.01)
    driver.enqueue(STORY, STORY)

    async def talker(sys):  # noqa: ANN001
        return (await sys.chat("tell")).text

    async with llmos.boot(driver, memory=None) as kernel:
        leaver, stayer = [await kernel.spawn(talker) for _ in range(2)]
        await until(lambda: len(driver.jobs) == 2 and all(len(job.token_ids) >= 2 for job in driver.jobs))
        [left] = [job for job in driver.jobs if job.pid == leaver.pid]
        left.outbox.leave()
        assert result(await kernel.wait(stayer.pid, timeout=5)) == STORY
        await kernel.wait(leaver.pid, timeout=5)
    assert left.cancelled and left.finish_reason == "cancelled"
    assert len(left.token_ids) < len(STORY.split())


# -- bursts of steps, and the gather wait (the tiny real engine) ------------------------------------------
one_thread = pytest.fixture(autouse=True)(one_torch_thread)
TINY = {"memory": None, "embedder": None, "durable": None, "mcp_servers": None}


class Steps:
    """Records every engine step of a driver (when it began, the jobs it ran), and how many
    driver calls the loop made (a step or a burst: each one hand-off to the compute thread)."""

    def __init__(self, driver: Any) -> None:
        self.steps: list[tuple[float, frozenset[int]]] = []
        self.jobs: dict[int, Any] = {}
        self.calls = 0
        engine_step, driver_step, driver_burst = driver.engine.step, driver.step, driver.burst

        def step(running: Any, emit: Any) -> None:
            self.steps.append((time.perf_counter(), frozenset(job.id for job in running)))
            self.jobs |= {job.id: job for job in running}
            engine_step(running, emit)

        async def counted_step(*args: Any) -> Any:
            self.calls += 1
            return await driver_step(*args)

        async def counted_burst(*args: Any) -> Any:
            self.calls += 1
            return await driver_burst(*args)

        driver.engine.step, driver.step, driver.burst = step, counted_step, counted_burst

    def after(self, moment: float) -> list[frozenset[int]]:
        """The jobs of each step that began after `moment`."""
        return [ids for began, ids in self.steps if began > moment]

    def job_of(self, pid: int) -> Any:
        [job] = [job for job in self.jobs.values() if job.pid == pid]
        return job


async def _generate(sys: Any, prompt: str = "the cat sat on the mat", max_tokens: int = 40) -> Any:
    return await sys.generate(prompt, max_tokens=max_tokens)


@pytest.mark.parametrize("burst", [1, 8])
async def test_a_lone_generation_runs_in_bursts_with_the_same_text(monkeypatch, burst) -> None:
    monkeypatch.setattr(params, "DECODE_BURST_STEPS", burst)
    monkeypatch.setattr(params, "DECODE_BURST_S", 60.0)  # only the step count bounds a burst here
    driver = tiny_driver(endless=True)
    seen = Steps(driver)
    async with llmos.boot(driver, **TINY) as kernel:
        reply = result(await kernel.wait((await kernel.spawn(_generate)).pid, timeout=30))
    assert reply.completion_tokens == 40 and reply.finish_reason == "length"
    steps = len(seen.steps)  # its prompt pass gives the 1st token, 39 more steps the others
    assert steps == 40
    # One call for the prompt pass, then bursts of 8 (8, 8, 8, 8, 7); else one a step.
    assert seen.calls == (steps if burst == 1 else 1 + 5)
    alone = tiny_driver(endless=True)
    async with llmos.boot(alone, **TINY) as kernel:
        monkeypatch.setattr(params, "DECODE_BURST_STEPS", 1)
        assert result(await kernel.wait((await kernel.spawn(_generate)).pid, timeout=30)).text == reply.text


async def test_a_request_or_a_suspend_mid_burst_counts_from_the_next_step(monkeypatch) -> None:
    # A burst asks after each step whether anything changed; a change that lands while it
    # asks may let one more step begin, never two.
    monkeypatch.setattr(params, "DECODE_BURST_S", 60.0)
    driver = tiny_driver(endless=True)
    seen = Steps(driver)
    async with llmos.boot(driver, **TINY) as kernel:
        long = await kernel.spawn(_generate, "a long story", 400)
        await until(lambda: len(seen.steps) >= 12, timeout=30)
        assert seen.calls < len(seen.steps) / 2  # bursting
        short = await kernel.spawn(_generate, "a short one", 6)
        await kernel.wait(short.pid, timeout=30)
        job = seen.job_of(short.pid)
        after = seen.after(job.submitted_at)
        first = next(n for n, ids in enumerate(after) if job.id in ids)
        assert first <= 1 and all(job.id in ids for ids in after[first:first + len(job.token_ids)])
        kernel.suspend(long.pid)
        suspended = time.perf_counter()
        await anyio.sleep(0.1)  # a hundred tiny steps' time
        assert sum(1 for ids in seen.after(suspended) if ids) <= 1  # (a step of none lets go of it)
        kernel.kill(long.pid)


async def _idle(sys: Any) -> None:
    await anyio.sleep_forever()


async def test_the_gather_wait_is_skipped_once_every_process_has_asked(monkeypatch) -> None:
    monkeypatch.setattr(params, "BATCH_GATHER_S", 2.0)
    async with llmos.boot(tiny_driver(), **TINY) as kernel:
        alone = result(await kernel.wait((await kernel.spawn(_generate, "hi", 2)).pid, timeout=30))
        idle = await kernel.spawn(_idle)  # may still ask: a request gathers for it
        gathered = result(await kernel.wait((await kernel.spawn(_generate, "hi", 2)).pid, timeout=30))
        kernel.kill(idle.pid)
    assert alone.first_token_s < 1.0 <= 2.0 <= gathered.first_token_s


async def _generate_later(sys: Any, delay_s: float) -> Any:
    await anyio.sleep(delay_s)
    return await _generate(sys, "hi", 2)


async def test_the_gather_wait_ends_when_the_last_process_that_may_ask_has_asked(monkeypatch) -> None:
    monkeypatch.setattr(params, "BATCH_GATHER_S", 5.0)
    async with llmos.boot(tiny_driver(), **TINY) as kernel:
        early = await kernel.spawn(_generate, "hi", 2)
        late = await kernel.spawn(_generate_later, 0.3)
        began = time.perf_counter()
        first, second = [result(await kernel.wait(p.pid, timeout=30)) for p in (early, late)]
        took = time.perf_counter() - began
    # It waited for the other one (asking 0.3 s after it, less tokenizing), not the whole 5 s.
    assert 0.2 <= first.first_token_s < 2.0
    assert second.first_token_s < 1.0 and took < 4.0


async def test_a_stream_closed_mid_burst_costs_only_its_own_generation(monkeypatch) -> None:
    # The reader of one stream leaves while a burst it runs in is under way (an HTTP client
    # that hung up): the text its earlier steps made has nowhere to go, and the other
    # generation of the batch finishes as if alone.
    monkeypatch.setattr(params, "DECODE_BURST_S", 60.0)
    monkeypatch.setattr(params, "DECODE_BURST_STEPS", 16)
    driver = tiny_driver(endless=True)
    mid_burst, resume, read_one = threading.Event(), threading.Event(), threading.Event()
    engine_step = driver.engine.step
    leave = anyio.Event()
    leaving: list[int] = []  # the pid of the process whose stream closes
    made_when_read: int | None = None  # its tokens at the first step after its reader had a piece

    def step(running: Any, emit: Any) -> None:  # on the compute thread
        nonlocal made_when_read
        engine_step(running, emit)
        # It stops once the reader waits to leave (it had a piece: text it has not read yet
        # would keep it reading) and this burst has made text since, which then has nowhere to go.
        for job in running:
            if job.pid not in leaving or not read_one.is_set() or mid_burst.is_set():
                continue
            if made_when_read is None:
                made_when_read = len(job.token_ids)
            elif len(job.token_ids) >= made_when_read + 2:
                mid_burst.set()
                assert resume.wait(10), "the test did not let the burst go on"

    driver.engine.step = step

    async def reader(sys: Any) -> str:
        stream = await sys.generate("a long story", max_tokens=300, stream=True)
        async with contextlib.aclosing(aiter(stream)) as pieces:
            async for _ in pieces:
                read_one.set()
                await leave.wait()
                break
        return "left"

    async with llmos.boot(driver, **TINY) as kernel:
        leaver = await kernel.spawn(reader)
        leaving.append(leaver.pid)
        stayer = await kernel.spawn(_generate, "the cat sat on the mat", 40)
        await until(mid_burst.is_set, timeout=30)
        leave.set()
        assert result(await kernel.wait(leaver.pid, timeout=10)) == "left"  # its stream closed mid-burst
        resume.set()
        reply = result(await kernel.wait(stayer.pid, timeout=30))
    assert reply.finish_reason == "length" and reply.completion_tokens == 40


async def test_a_streaming_reader_reads_a_bursts_text_before_the_next_step_begins(monkeypatch) -> None:
    # A stream's reader takes a turn of the event loop to wake; the serve loop waits for it
    # to read what a burst handed out at its end (one piece: the burst's steps' text joined)
    # before the next burst (beside a step it would take a core from the step's threads).
    # Here no text is posted mid-burst.
    monkeypatch.setattr(params, "DECODE_BURST_S", 60.0)
    monkeypatch.setattr(params, "DECODE_BURST_STEPS", 8)
    monkeypatch.setattr(params, "STREAM_EVERY_S", math.inf)
    driver = tiny_driver(endless=True)
    stepping = False  # a step or a burst has been handed to the compute thread and has not come back
    step, burst = driver.step, driver.burst

    async def flagged(call: Any, *args: Any) -> Any:
        nonlocal stepping
        stepping = True
        try:
            return await call(*args)
        finally:
            stepping = False

    driver.step, driver.burst = functools.partial(flagged, step), functools.partial(flagged, burst)

    async def reader(sys: Any) -> tuple[list[bool], int]:
        stream = await sys.generate("a long story", max_tokens=40, stream=True)
        during_a_step = [stepping async for _ in stream]
        return during_a_step, stream.reply.completion_tokens

    async with llmos.boot(driver, **TINY) as kernel:
        read_during_a_step, tokens = result(await kernel.wait((await kernel.spawn(reader)).pid, timeout=30))
    # the first token's burst, then bursts of 8 steps: about one piece a burst
    assert tokens == 40 and 4 <= len(read_during_a_step) <= 12
    assert not any(read_during_a_step)


async def test_a_burst_posts_less_often_the_more_readers_a_post_wakes(monkeypatch) -> None:
    driver = _long_bursts(monkeypatch, stream_every_s=0.05)
    monkeypatch.setattr(params, "STREAM_EVERY_S_PER_READER", 0.03)
    intervals: list[float] = []  # each burst's, as the serve loop set it

    class Recorded(Courier):
        def __init__(self, deliver: Any, every_s: float) -> None:
            intervals.append(every_s)
            super().__init__(deliver, every_s)

    monkeypatch.setattr(generation, "Courier", Recorded)

    async def reader(sys: Any) -> str:
        return await (await sys.generate("a long story", max_tokens=30, stream=True)).text()

    async with llmos.boot(driver, **TINY) as kernel:
        procs = [await kernel.spawn(reader) for _ in range(3)] + [await kernel.spawn(_generate, "the cat", 30)]
        for proc in procs:
            result(await kernel.wait(proc.pid, timeout=30))
    posting = [every_s for every_s in intervals if every_s != math.inf]
    # Three readers, 30 ms each: 90 ms. The fourth reply is not streamed: it wakes nobody.
    assert posting and max(posting) == pytest.approx(0.09) and min(posting) >= 0.05


def _long_bursts(monkeypatch: pytest.MonkeyPatch, stream_every_s: float) -> Any:
    """A tiny driver whose steps take 5 ms more (on the compute thread), run in bursts of up to
    64 steps whose text is posted every `stream_every_s`."""
    monkeypatch.setattr(params, "DECODE_BURST_S", 60.0)
    monkeypatch.setattr(params, "DECODE_BURST_STEPS", 64)
    monkeypatch.setattr(params, "STREAM_EVERY_S", stream_every_s)
    driver = tiny_driver(endless=True)
    engine_step = driver.engine.step

    def step(running: Any, emit: Any) -> None:
        engine_step(running, emit)
        time.sleep(0.005)

    driver.engine.step = step
    return driver


async def test_a_long_bursts_text_streams_while_the_burst_runs(monkeypatch) -> None:
    # One burst runs the whole reply (after the prompt pass's first token); its text reaches
    # the reader every STREAM_EVERY_S while the burst is still out, in order, the same text.
    driver = _long_bursts(monkeypatch, 0.02)
    seen = Steps(driver)
    bursts = BurstsOut(driver)

    async def reader(sys: Any) -> tuple[list[bool], str]:
        stream = await sys.generate("a long story", max_tokens=40, stream=True)
        during_the_burst, text = [], []
        async for piece in stream:
            during_the_burst.append(bursts.out > 0)
            text.append(piece)
        return during_the_burst, "".join(text)

    async with llmos.boot(driver, **TINY) as kernel:
        assert kernel.generation.loop_alive == kernel.watchdog.alive  # each hand-over is a sign of life
        lateness: list[float] = []
        kernel.generation.loop_alive = lateness.append
        read_during, streamed = result(await kernel.wait((await kernel.spawn(reader)).pid, timeout=30))
    assert seen.calls == 2  # the prompt pass, then one burst of 39 steps
    assert sum(read_during) >= 5  # 0.2 s of steps, posted every 0.02 s: read before the burst came back
    assert len(lateness) >= 5 and all(0 <= late < 5 for late in lateness)
    monkeypatch.setattr(params, "DECODE_BURST_STEPS", 1)
    async with llmos.boot(tiny_driver(endless=True), **TINY) as kernel:
        alone = result(await kernel.wait((await kernel.spawn(_generate, "a long story")).pid, timeout=30))
    assert alone.text == streamed


async def test_a_reply_not_streamed_gets_its_text_at_the_bursts_end_only(monkeypatch) -> None:
    # Nobody reads its stream: posting its text mid-burst would wake the event loop for nothing.
    driver = _long_bursts(monkeypatch, 0.01)
    async with llmos.boot(driver, **TINY) as kernel:
        delivered: list[int] = []
        deliver = kernel.generation._deliver
        kernel.generation._deliver = lambda pieces: (delivered.append(len(pieces)), deliver(pieces))[1]
        reply = result(await kernel.wait((await kernel.spawn(_generate)).pid, timeout=30))
    assert reply.completion_tokens == 40 and len(delivered) == 2  # the prompt pass's text, then the burst's at its end


async def test_a_courier_returns_once_the_loop_has_handed_its_post_out(monkeypatch) -> None:
    """The driver's thread goes on only after the loop delivered and the reader it woke ran:
    the loop's work is not left to run beside the next step."""
    monkeypatch.setattr(params, "HANDOVER_WAIT_S", 10.0)  # only a failure would wait this long
    order: list[str] = []
    woken = anyio.Event()

    async def reader() -> None:
        await woken.wait()
        order.append("reader ran")

    def deliver(batch: list[Any], at: float) -> None:
        order.append(f"delivered {batch[0][1]}")
        woken.set()

    def step() -> None:  # the driver's thread
        courier([(SimpleNamespace(id=1), "a")])
        order.append("step returned")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reader)
        await anyio.lowlevel.checkpoint()  # the reader waits
        courier = Courier(deliver, every_s=0.0)
        with anyio.fail_after(5):
            await anyio.to_thread.run_sync(step)
    assert order == ["delivered a", "reader ran", "step returned"]


async def test_a_courier_waits_no_longer_than_its_bound_for_a_busy_loop(monkeypatch) -> None:
    monkeypatch.setattr(params, "HANDOVER_WAIT_S", 0.02)
    delivered: list[float] = []
    courier = Courier(lambda batch, at: delivered.append(time.perf_counter()), every_s=0.0)
    returned: list[float] = []
    step = threading.Thread(target=lambda: (courier([(SimpleNamespace(id=1), "a")]),
                                            returned.append(time.perf_counter())))
    step.start()
    time.sleep(0.5)  # noqa: ASYNC251 - the loop kept busy on purpose: it cannot take the post meanwhile
    freed = time.perf_counter()
    step.join(5)
    await until(lambda: bool(delivered), timeout=5)
    assert returned and returned[0] < freed  # the step went on without the loop
    assert delivered[0] >= freed  # the post waited for the loop, and was delivered once it was free


async def test_a_courier_called_on_the_loop_itself_posts_without_waiting(monkeypatch) -> None:
    """A driver that steps on the event loop's thread: waiting there would block the loop."""
    monkeypatch.setattr(params, "HANDOVER_WAIT_S", 10.0)
    delivered: list[str] = []
    courier = Courier(lambda batch, at: delivered.append(batch[0][1]), every_s=0.0)
    began = time.perf_counter()
    courier([(SimpleNamespace(id=1), "a")])
    assert time.perf_counter() - began < 1.0 and delivered == []  # posted, for the loop's next turn
    await until(lambda: delivered == ["a"], timeout=5)


async def test_a_courier_posts_what_it_holds_once_its_interval_has_passed() -> None:
    posted: list[list[Any]] = []
    moments: list[float] = []
    done = anyio.Event()
    courier = Courier(lambda batch, at: (posted.append(batch), moments.append(at), done.set()), every_s=0.05)
    holding = Courier(lambda batch, at: posted.append(batch), every_s=math.inf)
    one, two = SimpleNamespace(id=1), SimpleNamespace(id=2)  # the jobs: only their ids are read
    began = time.perf_counter()

    def steps() -> None:  # the driver's thread
        courier([(one, "a"), (two, "1")])
        holding([(one, "x")])
        time.sleep(0.06)
        courier([(one, "b"), (two, "2")])  # the interval has passed: what it holds goes, one piece a job
        courier([(one, "d")])  # held again
        holding([(one, "y")])

    await anyio.to_thread.run_sync(steps)
    with anyio.fail_after(5):
        await done.wait()
    assert posted == [[(one, "ab"), (two, "12")]]
    assert began + 0.05 <= moments[0] <= time.perf_counter()  # when it posted: the lateness is measured from it
    assert courier.rest() == [(one, "d")] and holding.rest() == [(one, "xy")]


# -- preparing a job: on the loop when it is quick ---------------------------------------------------
class _ThreadNoting(FakeDriver):
    """Notes the thread each job was prepared on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prepared_on: list[threading.Thread] = []

    def prepare(self, job: Any) -> None:
        self.prepared_on.append(threading.current_thread())
        super().prepare(job)


class _AsksAServer(_ThreadNoting):
    prepares_inline = False  # as a remote driver, whose token counts may ask its server


async def _chat(sys: Any, message: str) -> str:
    return (await sys.chat(message)).text


async def test_a_short_job_is_prepared_on_the_loop_and_a_long_one_in_a_worker_thread() -> None:
    driver = _ThreadNoting(context_length=3 * params.INLINE_COUNT_CHARS)
    async with llmos.boot(driver, memory=None) as kernel:
        for message in ("hi", "x" * (params.INLINE_COUNT_CHARS + 1)):
            result(await kernel.wait((await kernel.spawn(_chat, message)).pid, timeout=10))
    short, long = driver.prepared_on
    assert short is threading.current_thread() and long is not short


async def test_a_driver_that_may_do_io_when_preparing_prepares_in_a_worker_thread() -> None:
    driver = _AsksAServer()
    async with llmos.boot(driver, memory=None) as kernel:
        assert result(await kernel.wait((await kernel.spawn(_chat, "hi")).pid, timeout=10)) == "echo: hi"
    [thread] = driver.prepared_on
    assert thread is not threading.current_thread()


async def test_a_derived_model_s_long_system_prompt_counts_toward_preparing_on_the_loop() -> None:
    from llmos.drivers.derived import DerivedDriver

    for system, on_loop in (("Be brief.", True), ("x" * params.INLINE_COUNT_CHARS, False)):
        base = _ThreadNoting(context_length=3 * params.INLINE_COUNT_CHARS)
        async with llmos.boot(DerivedDriver("terse", base, system=system), memory=None) as kernel:
            result(await kernel.wait((await kernel.spawn(_chat, "hi")).pid, timeout=10))
        [thread] = base.prepared_on
        assert (thread is threading.current_thread()) is on_loop


def test_a_job_with_a_json_schema_or_long_texts_is_not_quick_to_prepare() -> None:
    def job(**fields: Any) -> GenerationJob:
        return GenerationJob(id=1, pid=1, **{"sampling": SamplingParams(), **fields})

    room = params.INLINE_COUNT_CHARS
    assert generation.quick_to_prepare(job(prompt="x" * room, options=()))
    assert not generation.quick_to_prepare(job(prompt="x" * (room - 1), options=("ab",)))
    assert not generation.quick_to_prepare(job(messages=(ChatMessage(role="user", content="x" * (room + 1)),)))
    assert not generation.quick_to_prepare(job(prompt="hi", sampling=SamplingParams(json_schema={"type": "object"})))
    assert not generation.quick_to_prepare(job(prompt="x" * (room - 10)), added_chars=11)  # a derived system prompt


class _SlowerForEarlier(FakeDriver):
    """Prepares "question i" in (12 - i) ms: in worker threads the later ones would finish first."""

    def prepare(self, job: Any) -> None:
        time.sleep((12 - int(job.messages[-1].content.split()[-1])) / 1000)
        super().prepare(job)


async def test_processes_that_chat_at_once_are_queued_in_the_order_they_asked() -> None:
    driver = _SlowerForEarlier(max_batch=1)  # one job at a time: the order they run in is the queue's
    async with llmos.boot(driver, memory=None) as kernel:
        pids = [(await kernel.spawn(_chat, f"question {i}")).pid for i in range(12)]
        for pid in pids:
            result(await kernel.wait(pid, timeout=10))
    assert [job.pid for job in driver.jobs] == pids


async def test_the_engines_driver_prepares_a_short_job_on_the_loop(monkeypatch) -> None:
    driver = tiny_driver()
    prepared_on: list[threading.Thread] = []
    prepare = driver.prepare
    monkeypatch.setattr(driver, "prepare", lambda job: (prepared_on.append(threading.current_thread()), prepare(job)))
    async with llmos.boot(driver, **TINY) as kernel:
        reply = result(await kernel.wait((await kernel.spawn(_generate, "hi", 2)).pid, timeout=30))
    assert reply.completion_tokens == 2 and prepared_on == [threading.current_thread()]
