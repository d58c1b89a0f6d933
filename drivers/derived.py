"""A derived model (`llmos models create NAME --from BASE ...`, the Modelfile idea): the base
model's driver, with its own system prompt and default sampling settings.

The wrapper changes only what a job asks for, before the base driver sees it; everything
else (stepping, KV blocks, statistics, `can_score`) is the base driver's, by delegation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmos.kernel.model import ChatMessage, EmitFn, GenerationJob, SamplingParams

DEFAULTS = SamplingParams()


class DerivedDriver:
    def __init__(self, name: str, base: Any, *, system: str | None = None,
                 sampling: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.base = base
        self.system = system
        self.sampling = dict(sampling or {})

    def __getattr__(self, attribute: str) -> Any:  # context_length, max_batch, kv, tokenizer, ...
        return getattr(self.base, attribute)

    def with_system(self, messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
        """The messages with the derived system prompt first, unless they bring their own."""
        if self.system is None or any(m.role == "system" for m in messages):
            return tuple(messages)
        return (ChatMessage(role="system", content=self.system), *messages)

    def with_defaults(self, sampling: SamplingParams) -> SamplingParams:
        """The request's settings, with the derived defaults where the request left the global default."""
        update = {key: value for key, value in self.sampling.items() if getattr(sampling, key) == getattr(DEFAULTS, key)}
        return sampling.model_copy(update=update) if update else sampling

    # -- the ModelDriver protocol --------------------------------------------------------------------
    def tokenize(self, messages: Sequence[ChatMessage]) -> list[int]:
        # Context windows count a prompt with this before the job exists: it must count the
        # system prompt the job will get.
        return self.base.tokenize(self.with_system(messages))

    def prepare(self, job: GenerationJob) -> None:
        if job.messages is not None:
            job.messages = self.with_system(job.messages)
        job.sampling = self.with_defaults(job.sampling)
        self.base.prepare(job)

    async def step(self, running: Sequence[GenerationJob], emit: EmitFn) -> None:
        await self.base.step(running, emit)
