"""The generation service: the one place where processes' requests meet the model.

Requests wait in the scheduler; a loop on the event loop asks it, step by step, which
requests run, and has the driver advance them by one token, streaming text back as it
comes. One record travels the whole way: the `GenerationJob` a process gets from `submit`.
Invariant: a job is in `self.jobs` exactly while it is unfinished, and its owner is
charged for it exactly once, when it leaves.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import anyio
import anyio.lowlevel
import anyio.to_thread

from llmos.kernel import params
from llmos.kernel.errors import ContextOverflow, ModelError, QuotaExceeded
from llmos.kernel.model import BurstingDriver, ChatMessage, EmitFn, GenerationJob, ModelDriver, SamplingParams
from llmos.kernel.outbox import Outbox
from llmos.kernel.process import Process
from llmos.kernel.scheduler import Scheduler, StepOutput
from llmos.kernel.stats import GenerationStatistics

log = logging.getLogger(__name__)

RATE_WINDOW_S = 5.0  # tokens/s in statistics() is averaged over this many seconds
# Turns of the event loop the serve loop yields after handing out text, for its readers (see
# `_let_readers_read`): at most READ_TURNS, and no more once the text has not been read for
# IDLE_TURNS (a `sys.generate` stream's reader takes a turn to wake).
IDLE_TURNS = 4
READ_TURNS = 4 * params.DECODE_BURST_STEPS


async def result(job: GenerationJob) -> GenerationJob:
    """Wait for a submitted job to end; a model failure is a ModelError."""
    await job.outbox.done.wait()
    if job.finish_reason == "error":
        raise ModelError(f"the model failed on this request: {job.error}")
    return job


async def pieces(job: GenerationJob) -> AsyncIterator[str]:
    """A submitted job's text as it is generated; a model failure surfaces at the end."""
    async for piece in job.outbox.pieces():
        yield piece
    await result(job)


def quick_to_prepare(job: GenerationJob, added_chars: int = 0) -> bool:
    """Whether a driver that does no I/O in `prepare` (`prepares_inline`) prepares `job` in
    well under a millisecond, so on the event loop: its texts, with the `added_chars` the
    driver's `prepare` adds (a derived model's system prompt), are short (INLINE_COUNT_CHARS,
    the context window's rule for token counts) and it has no JSON schema (whose grammar
    takes a compile)."""
    chars = (len(job.prompt or "") + sum(len(message.content) for message in job.messages or ())
             + sum(len(option) for option in job.options or ()) + added_chars)
    return chars <= params.INLINE_COUNT_CHARS and job.sampling.json_schema is None


class GenerationService:
    def __init__(self, driver: ModelDriver, scheduler: Scheduler,
                 variants: dict[str, ModelDriver] | None = None) -> None:
        self.driver = driver
        # Drivers over `driver`'s engine (a derived model, an adapter): a process with
        # `model` set prepares its jobs with that one; every job steps on `driver`.
        self.variants = variants if variants is not None else {}
        self._can_burst = isinstance(driver, BurstingDriver)  # once: a protocol check walks its members
        self.scheduler = scheduler
        self.jobs: dict[int, GenerationJob] = {}
        self._owners: dict[int, Process] = {}
        self._ids = itertools.count(1)
        self._wakeup = anyio.Event()
        scheduler.on_change = self._wake  # any change the scheduler sees may give the loop work
        # Set by every change that may alter the next step's batch (a request, a suspend, a
        # cancel): a burst of steps (see `_advance`) ends at the step after it.
        self._changed = False
        # The pids of the processes that may still ask for a generation (set by the kernel);
        # once each of them has one queued, the loop starts at once instead of gathering.
        self.askers: Callable[[], Iterable[int]] | None = None
        self._running_ids: frozenset[int] = frozenset()  # the batch the driver holds now
        # Jobs the driver may still hold state for (a KV row, a stream): the last step's
        # unfinished ones, or its whole batch if it failed. It lets go of those not in its
        # next step; when none comes, the loop steps it over no jobs before it idles.
        self._held: set[int] = set()
        # A step that has not returned after this long fails its batch (see params).
        self.step_timeout_s = params.STEP_TIMEOUT_S
        self._handed: dict[int, Outbox] = {}  # the last step's text's waiting readers, by job
        self._streaming: set[int] = set()  # jobs whose reader has waited for a piece: streamed replies
        self._recent: deque[tuple[float, int]] = deque()  # (step end, tokens) over the last RATE_WINDOW_S
        self.closed = False  # its model was unloaded (kernel/model_pool.py): it takes no more requests
        # Told how late each text hand-over posted during a burst ran (the kernel's watchdog,
        # kernel/watchdog.py `alive`: a sign of life from the loop).
        self.loop_alive: Callable[[float], None] | None = None
        self.steps = self.tokens = 0

    async def submit(self, proc: Process, sampling: SamplingParams, *, prompt: str | None = None,
                     messages: Sequence[ChatMessage] | None = None, prompt_ids: Sequence[int] | None = None,
                     options: tuple[str, ...] | None = None) -> GenerationJob:
        """Queue a generation for `proc`; fails fast if it cannot fit the context or quota.
        `prompt_ids`: the messages' token ids when the caller has them already (a context
        window tokenizes its final prompt to check its size), so the driver need not again.
        `options`: score these as continuations instead of generating."""
        job = GenerationJob(id=next(self._ids), pid=proc.pid, sampling=sampling, prompt=prompt,
                            messages=tuple(messages) if messages is not None else None,
                            prompt_ids=list(prompt_ids or ()), options=options)
        driver = self.driver_for(proc)
        inline = getattr(driver, "prepares_inline", False)
        if inline and quick_to_prepare(job, getattr(driver, "prepare_adds_chars", 0)):
            driver.prepare(job)  # on the loop: no thread hop; processes asking at once queue in the order they asked
        else:  # a long text to tokenize, a grammar to compile, or a driver that asks a server
            await anyio.to_thread.run_sync(driver.prepare, job)
        if options is not None:  # room after the prompt for the options side by side (see Engine)
            needed = max(1, sum(len(ids) - 1 for ids in job.option_ids))
            job.sampling = job.sampling.model_copy(update={"max_tokens": needed})
        job.sampling = self._fit_budget(proc, job)
        if options is not None and job.sampling.max_tokens < needed:
            raise ContextOverflow(f"the prompt ({len(job.prompt_ids)} tokens) and the options ({needed} more) "
                                  f"do not fit the model's context window of {self.driver.context_length}")
        job.priority = proc.priority  # as it is now: a `nice` may have come while it was tokenized
        job.submitted_at, job.outbox = time.perf_counter(), Outbox()
        if self.closed:  # unloaded while the request was prepared
            raise ModelError(f"{self.driver.name} was unloaded while this request was prepared; ask again")
        self.scheduler.add(job)  # first: a full queue (QueueFull) leaves nothing behind
        self.jobs[job.id] = job
        self._owners[job.id] = proc
        return job

    def driver_for(self, proc: Process) -> ModelDriver:
        """The driver that prepares `proc`'s jobs: its variant of the model, if it chose one."""
        return self.variants[proc.model] if proc.model is not None else self.driver

    def _wake(self) -> None:
        self._changed = True
        self._wakeup.set()

    def _fit_budget(self, proc: Process, job: GenerationJob) -> SamplingParams:
        """Cap the reply to what the context window and the token quota leave."""
        prompt_tokens = len(job.prompt_ids)
        room = self.driver.context_length - prompt_tokens
        if room < 1:
            raise ContextOverflow(f"the prompt is {prompt_tokens} tokens; the model's context window is "
                                  f"{self.driver.context_length}, leaving no room for a reply")
        cap = min(job.sampling.max_tokens, room)
        if proc.quotas.max_tokens is not None:
            left = proc.quotas.max_tokens - proc.stats.tokens - prompt_tokens
            if left < 1:
                raise QuotaExceeded(f"process {proc.pid} has used {proc.stats.tokens} of its "
                                    f"{proc.quotas.max_tokens}-token quota; this prompt alone needs {prompt_tokens}")
            cap = min(cap, left)
        return job.sampling.model_copy(update={"max_tokens": cap})

    def cancel(self, job: GenerationJob) -> None:
        """Stop a generation: at once if it waits, at the driver's next step if it runs."""
        if job.id not in self.jobs:
            return
        job.cancelled = True
        self._changed = True
        if job.id not in self._running_ids:
            self._finish(job, "cancelled")

    def cancel_owner(self, pid: int) -> None:
        """Cancel every generation of a process (it was killed or ended)."""
        for job in [j for j in self.jobs.values() if j.pid == pid]:
            self.cancel(job)

    async def serve(self) -> None:
        """The loop: schedule, step the driver off the event loop, account. Runs until cancelled."""
        while True:
            if not self.scheduler.has_work():
                if self._held - self.jobs.keys():  # the driver holds jobs that have left
                    await self._let_go()
                    continue  # work may have come meanwhile
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                await self._gather()
                continue
            plan = self.scheduler.schedule()
            for preempted in plan.preempted:  # its blocks went back
                owner = self._owners.get(preempted)
                if owner is not None:
                    owner.stats.kv_bytes = 0
            jobs = [self.jobs[i] for i in plan.running]
            before = [len(job.token_ids) for job in jobs]
            self._running_ids = frozenset(plan.running)
            started = time.perf_counter()
            self._held = {job.id for job in jobs}
            steps = 1
            try:
                steps = await self._advance(jobs)
                self._held = {job.id for job in jobs if not job.finished}  # it released the finished
            except Exception as exc:  # a driver failure fails its batch, never the kernel
                log.exception("model driver failed")
                for job in jobs:
                    job.finish_reason, job.error = "error", f"{type(exc).__name__}: {exc}"
                    job.cancelled = True  # the driver drops it (a remote stream closes)
            finally:
                self._running_ids = frozenset()
            self._account(jobs, before, time.perf_counter() - started, steps)
            await self._let_readers_read()

    async def _let_readers_read(self) -> None:
        """Let the processes just handed text read it before the next step starts: on a CPU the
        step's threads use every core, and a task that runs beside them stalls the step's
        threads (and takes the GIL from their Python parts) instead of costing its own time. A
        reader takes a turn of the event loop to wake (more where it awaits between pieces: an
        HTTP response's writes), so this yields turns until the outboxes whose reader was
        waiting are read, or have not emptied for IDLE_TURNS (a reader gone to do something
        else), at most READ_TURNS; with none, one turn."""
        outboxes, self._handed = list(self._handed.values()), {}
        unread, idle = _unread(outboxes), 0
        for _ in range(READ_TURNS):
            await anyio.lowlevel.checkpoint()  # every task woken meanwhile takes its turn first
            left = _unread(outboxes)
            idle = idle + 1 if left >= unread else 0
            if left == 0 or idle >= IDLE_TURNS:
                return
            unread = left

    async def _gather(self) -> None:
        """After the model went idle and a request came: wait up to BATCH_GATHER_S for the
        requests of the other processes that may ask, so that agents started together are
        served together, and no longer than until the last of them has asked."""
        deadline = time.perf_counter() + params.BATCH_GATHER_S
        while not self._everyone_asked():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup = anyio.Event()  # set by the next request (or any change)
            with anyio.move_on_after(remaining):
                await self._wakeup.wait()

    def _everyone_asked(self) -> bool:
        """Whether every process that may ask for a generation has one queued already: then
        no request is left to gather into the first batch."""
        if self.askers is None:
            return False
        asking = {job.pid for job in self.jobs.values()}
        return all(pid in asking for pid in self.askers())

    async def _advance(self, jobs: list[GenerationJob]) -> int:
        """Step the batch once, or in a burst when nobody waits for a slot; the text is
        delivered when it returns, and a streamed reply's also while a burst runs. Returns the
        steps run."""
        burst = self._burst_size()
        self._changed = False
        courier = Courier(self._deliver_posted, self._post_every(jobs) if burst > 1 else math.inf)
        try:
            return await self._step(jobs, courier, burst)
        finally:  # a burst that fails still hands out what its earlier steps made
            self._deliver(courier.rest())

    def _post_every(self, jobs: list[GenerationJob]) -> float:
        """How often a burst over `jobs` posts its text to the loop (`Courier`): never where no
        job of it is read as a stream, else every STREAM_EVERY_S, and less often the more
        readers a post wakes, STREAM_EVERY_S_PER_READER each (the loop's work for them runs
        beside the engine's steps)."""
        readers = sum(1 for job in jobs if job.id in self._streaming or job.outbox.reader_waits)
        return max(params.STREAM_EVERY_S, params.STREAM_EVERY_S_PER_READER * readers) if readers else math.inf

    def _burst_goes_on(self, jobs: list[GenerationJob]) -> Callable[[], bool]:
        """Whether a burst of steps over `jobs` may take another (asked on the driver's
        thread): not after a change the scheduler must see, nor past DECODE_BURST_S (the
        text waits for the burst's end), nor once a job has its first token (its time to
        first token is not to wait for the burst)."""
        started = time.perf_counter()
        unstarted = [job for job in jobs if not job.token_ids]

        def goes_on() -> bool:
            return (not self._changed and time.perf_counter() - started < params.DECODE_BURST_S
                    and not any(job.token_ids for job in unstarted))
        return goes_on

    def _burst_size(self) -> int:
        """How many steps the next may run back to back: one while a request waits for a
        slot (the scheduler must decide again after each step), or if the driver cannot."""
        if params.DECODE_BURST_STEPS <= 1 or not self._can_burst or self.scheduler.someone_waits():
            return 1
        return params.DECODE_BURST_STEPS

    async def _step(self, jobs: list[GenerationJob], emit: EmitFn, burst: int = 1) -> int:
        """One driver step (or a burst of up to `burst`), bounded by `step_timeout_s`: a
        driver that hangs fails its batch (TimeoutError) instead of leaving every generation
        waiting forever. A step that is shielded (the compute thread's) finishes first, and
        then counts as done. Returns the steps run."""
        steps = 1
        with anyio.move_on_after(self.step_timeout_s) as bound:
            if burst > 1:
                steps = await self.driver.burst(jobs, emit, self._burst_goes_on(jobs), burst)  # type: ignore[attr-defined]
            else:
                await self.driver.step(jobs, emit)
        if bound.cancelled_caught:
            raise TimeoutError(f"the model did not finish a step within {self.step_timeout_s:g} s")
        return steps

    async def _let_go(self) -> None:
        """Step the driver over no jobs, so that it lets go of the ones that left while it
        held them (a failed step's batch, a generation cancelled between steps): their KV
        blocks and state are freed now, not when the next request happens to come."""
        self._held = set()  # tried once: the driver's next step lets go of them in any case
        try:
            await self._step([], lambda pieces: None)
        except Exception:
            log.exception("model driver failed to let go of finished jobs")

    def _account(self, jobs: list[GenerationJob], before: list[int], elapsed: float, steps: int) -> None:
        decoded = {job.id: len(job.token_ids) - n for job, n in zip(jobs, before, strict=True)}
        self._count(sum(decoded.values()), steps)
        finished = frozenset(job.id for job in jobs if job.finished or job.cancelled)
        self.scheduler.update_from_output(StepOutput(tokens=decoded, finished=finished))
        share = elapsed / max(len(jobs), 1)  # a step's time, split among those it served
        kv = self.scheduler.kv
        for job in jobs:
            owner = self._owners.get(job.id)
            if owner is not None:
                owner.stats.generation_time_s += share
                owner.stats.kv_bytes = kv.bytes_held(job) if kv is not None and job.id not in finished else 0
            if job.id in finished and job.id in self.jobs:
                self._finish(job, job.finish_reason or "cancelled")

    def _count(self, tokens: int, steps: int) -> None:
        now = time.perf_counter()
        self.steps, self.tokens = self.steps + steps, self.tokens + tokens
        self._recent.append((now, tokens))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def statistics(self) -> GenerationStatistics:
        """What `top` shows of the model: queue, batch, throughput, and the driver's own figures."""
        window = [n for t, n in self._recent if t >= time.perf_counter() - RATE_WINDOW_S]
        driver_stats = getattr(self.driver, "statistics", None)
        return GenerationStatistics(model=self.driver.name, scheduler=self.scheduler.statistics(), steps=self.steps,
                                    tokens=self.tokens, tokens_per_s=sum(window) / RATE_WINDOW_S,
                                    driver=driver_stats() if callable(driver_stats) else {})

    def _finish(self, job: GenerationJob, reason: str) -> None:
        job.finish_reason = job.finish_reason or reason  # type: ignore[assignment]
        owner = self._owners.pop(job.id)
        owner.stats.kv_bytes = 0
        owner.stats.prompt_tokens += len(job.prompt_ids)
        owner.stats.completion_tokens += len(job.token_ids)
        del self.jobs[job.id]
        self._streaming.discard(job.id)
        self.scheduler.remove(job.id)
        job.outbox.end()

    def _deliver_posted(self, pieces: Sequence[tuple[GenerationJob, str]], posted_at: float) -> None:
        """`_deliver`, for text the driver's thread posted at `posted_at` during a burst."""
        if self.loop_alive is not None:
            self.loop_alive(max(0.0, time.perf_counter() - posted_at))
        self._deliver(pieces)

    def _deliver(self, pieces: Sequence[tuple[GenerationJob, str]]) -> None:
        """Hand each job its text, noting the streams whose reader waits for it (see
        `_let_readers_read`; a reply not streamed has none). A job cancelled while the burst
        ran gets none: its reader may have gone already (a client that hung up), and one
        reader's leaving must never fail the other jobs of the batch."""
        for job, piece in pieces:
            if not piece or job.cancelled or job.id not in self.jobs:
                continue
            if job.first_token_at is None:
                job.first_token_at = time.perf_counter()
            waits = job.id in self._handed or job.outbox.reader_waits  # asked before the put: it wakes the reader
            if not job.outbox.put(piece):  # its reader left without a word: nobody wants the rest
                self.cancel(job)
            elif waits:
                self._handed[job.id] = job.outbox
                self._streaming.add(job.id)


class Courier:
    """A burst's `emit`, called on the driver's thread after each step: it keeps the steps'
    text and, once `every_s` has passed since it last did, posts what it holds (one piece a
    job) to `deliver` on the event loop (with the moment it posted), so that a long burst's
    text still streams, and waits up to HANDOVER_WAIT_S for the loop to have handed it out and
    let the readers it woke take their turn. The loop's work then runs while the step's
    threads wait between two steps rather than beside the next one, where it would stall a
    thread of the pass on its CPU (measured: docs/BENCHMARKS.md); a loop busy elsewhere costs
    the burst that wait at most. The rest is for the loop to take (`rest`) once the burst is
    back. Under an event loop other than asyncio's (trio), everything waits for the end."""

    def __init__(self, deliver: Callable[[list[tuple[GenerationJob, str]], float], None], every_s: float) -> None:
        self._deliver, self._every_s = deliver, every_s
        self._held: list[tuple[GenerationJob, str]] = []
        self._posted_at = time.perf_counter()
        self._loop_thread = threading.get_ident()  # made on the loop's thread
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def __call__(self, pieces: Sequence[tuple[GenerationJob, str]]) -> None:
        self._held.extend(pieces)
        now = time.perf_counter()
        if self._loop is not None and self._held and now - self._posted_at >= self._every_s:
            batch, self._held, self._posted_at = _by_job(self._held), [], now
            handed = threading.Event()
            self._loop.call_soon_threadsafe(self._hand_over, batch, now, handed)  # before the burst's own return
            if threading.get_ident() != self._loop_thread:  # on the loop (a driver stepping there) waiting blocks it
                handed.wait(params.HANDOVER_WAIT_S)

    def _hand_over(self, batch: list[tuple[GenerationJob, str]], posted_at: float, handed: threading.Event) -> None:
        """On the loop: deliver, then let the driver's thread go once the readers woken have
        had their turn (the callbacks that wake them were queued first)."""
        try:
            self._deliver(batch, posted_at)
        finally:
            asyncio.get_running_loop().call_soon(handed.set)

    def rest(self) -> list[tuple[GenerationJob, str]]:
        return _by_job(self._held)


def _by_job(pieces: Sequence[tuple[GenerationJob, str]]) -> list[tuple[GenerationJob, str]]:
    """One piece a job, its steps' text joined in order: each piece costs the loop `_deliver`'s
    work and a pass of its reader's own loop (an HTTP stream writes a chunk a piece), beside
    the engine's next steps. (Measured alone, before `Outbox`, at 64 agents: within the noise.)"""
    joined: dict[int, tuple[GenerationJob, list[str]]] = {}
    for job, piece in pieces:
        joined.setdefault(job.id, (job, []))[1].append(piece)
    return [(job, "".join(parts)) for job, parts in joined.values()]


def _unread(outboxes: Iterable[Outbox]) -> int:
    """Pieces handed to `outboxes` and not read yet."""
    return sum(outbox.unread for outbox in outboxes)
