"""Shared test helpers: a scripted, deterministic model driver.

`FakeDriver` stands in for a model in kernel unit tests (scheduling, isolation, IPC,
quotas); every feature that touches a model is also tested on the real one.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from llmos.drivers.text import advance
from llmos.kernel import Kernel
from llmos.kernel.errors import ContextOverflow, SyscallError
from llmos.kernel.model import EmitFn, GenerationJob
from llmos.kernel.process import ExitStatus, ProcState

_WORDS = re.compile(r"\S+\s*|\s+")


@dataclass
class _FakeState:
    """A job's scripted answer, one word per token, and how much of it was streamed."""

    words: list[str]
    streamed: int = 0


class FakeDriver:
    """Answers from a queue (`enqueue`), else from `script(prompt_text)`, else "echo: <last message>".

    One "token" is one whitespace-separated word of the answer; a prompt counts one
    token per character. `step_delay_s` makes each decoding step take time, so tests
    can kill or suspend a process mid-generation. `batches` records the job ids of
    every step, to assert what was served together; `jobs` keeps every job it was handed.
    """

    def __init__(self, script: Callable[[str], str] | None = None, *, context_length: int = 4096,
                 step_delay_s: float = 0.0, fail_with: Exception | None = None, name: str = "fake",
                 max_batch: int = 64) -> None:
        self.name = name
        self.context_length = context_length
        self.max_batch = max_batch
        self.script = script
        self.step_delay_s = step_delay_s
        self.fail_with = fail_with
        self.batches: list[list[int]] = []
        self.jobs: list[GenerationJob] = []
        self.prompts: list[str] = []
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()

    def enqueue(self, *answers: str) -> None:
        self._queue.extend(answers)

    @staticmethod
    def render(job: GenerationJob) -> str:
        if job.messages is None:
            return job.prompt or ""
        return "".join(f"<{m.role}>{m.content}\n" for m in job.messages) + "<assistant>"

    def prepare(self, job: GenerationJob) -> None:
        text = self.render(job)
        job.prompt_ids = [ord(c) for c in text]
        if len(job.prompt_ids) >= self.context_length:
            raise ContextOverflow(f"the prompt is {len(job.prompt_ids)} tokens; the context window is "
                                  f"{self.context_length}")

    def _answer(self, job: GenerationJob) -> _FakeState:
        if job.driver_state is None:
            with self._lock:
                prompt = self.render(job)
                self.prompts.append(prompt)
                if self._queue:
                    answer = self._queue.popleft()
                elif self.script is not None:
                    answer = self.script(prompt)
                else:
                    last = job.messages[-1].content if job.messages else prompt
                    answer = f"echo: {last}"
            job.driver_state = _FakeState(words=_WORDS.findall(answer))
        return job.driver_state

    def step(self, running: Sequence[GenerationJob], emit: EmitFn) -> None:
        self.batches.append([job.id for job in running])
        self.jobs += [job for job in running if job not in self.jobs]
        if self.fail_with is not None:
            raise self.fail_with
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        emit([piece for job in running if not job.finished and (piece := self._step(job))])

    def _step(self, job: GenerationJob) -> tuple[GenerationJob, str] | None:
        if job.cancelled:
            job.finish_reason = "cancelled"
            return None
        state = self._answer(job)
        words, n = state.words, len(job.token_ids)
        if n >= len(words):
            job.finish_reason = "stop"
            return None
        job.token_ids.append(n)
        final = n + 1 == len(words) or len(job.token_ids) >= job.sampling.max_tokens
        piece, stopped = advance(job, "".join(words[: n + 1]), state.streamed, final)
        state.streamed += len(piece)
        if stopped or n + 1 == len(words):
            job.finish_reason = "stop"
        elif final:
            job.finish_reason = "length"
        return job, piece



async def spawn_and_wait(kernel: Kernel, app: Any, *args: Any, timeout: float = 5, **options: Any) -> ExitStatus:
    """Run `app` as a process to its end and return its exit status."""
    info = await kernel.spawn(app, *args, **options)
    return await kernel.wait(info.pid, timeout=timeout)


def result(status: ExitStatus) -> Any:
    """The process's return value, failing the test with its reason unless it EXITED."""
    assert status.state is ProcState.EXITED, f"{status.state.name}: {status.reason}\n{status.traceback}"
    return status.result


async def caught(call: Awaitable[Any]) -> Any:
    """Await a syscall that should fail and return its error (or ("returned", value)).

    Inside a process, return errors to the test body rather than asserting there: a
    pytest failure is a BaseException that would end the process, not the test."""
    try:
        value = await call
    except SyscallError as exc:
        return exc
    return ("returned", value)


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until `predicate()` holds, polling; fail after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)
