"""A derived model (`llmos models create NAME --from BASE ...`, the Modelfile idea): the base
model's driver, with its own system prompt, default sampling settings and LoRA adapter (served
by the base's engine beside the base model and other adapters, in the same batch).

The wrapper changes only what a job asks for, before the base driver sees it; everything
else (stepping, KV blocks, statistics, `can_score`) is the base driver's, by delegation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmos.drivers.errors import ModelUnavailable
from llmos.kernel.model import ChatMessage, EmitFn, GenerationJob, SamplingParams

DEFAULTS = SamplingParams()


class DerivedDriver:
    def __init__(self, name: str, base: Any, *, system: str | None = None,
                 sampling: Mapping[str, Any] | None = None, adapter: tuple[str, Path] | None = None) -> None:
        """`adapter`: (the name it is served under, its PEFT folder), loaded into the base's
        engine now (blocking) unless it is there already."""
        self.name = name
        self.base = base
        self.system = system
        self.sampling = dict(sampling or {})
        self.adapter = adapter[0] if adapter is not None else None
        if adapter is not None:
            if not hasattr(base, "load_adapter"):
                raise ModelUnavailable(f"{name!r} has a LoRA adapter; {getattr(base, 'name', base)!r} is not served "
                                       "by llmos's engine, which is what serves adapters")
            base.load_adapter(*adapter)

    def __getattr__(self, attribute: str) -> Any:  # context_length, max_batch, kv, tokenizer, ...
        return getattr(self.base, attribute)

    @property
    def prepare_adds_chars(self) -> int:
        """Characters `prepare` may add to a job's texts (its system prompt): what the kernel
        counts before it prepares a job on the event loop (kernel/generation.py `quick_to_prepare`)."""
        return len(self.system or "")

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
            messages = self.with_system(job.messages)
            if messages != job.messages:  # ids counted without the system prompt (another model's window) are stale
                job.messages, job.prompt_ids = messages, []
        job.sampling = self.with_defaults(job.sampling)
        if job.adapter is None:
            job.adapter = self.adapter
        self.base.prepare(job)

    async def step(self, running: Sequence[GenerationJob], emit: EmitFn) -> None:
        await self.base.step(running, emit)
