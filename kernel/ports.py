"""The narrow ports the kernel hands to the subsystems plugged into it, so that none of
them holds the kernel itself. `ModelPort` (llmos.kernel.memory) is what the memory system
may ask: the model's size, token counts, and a generation on a process's behalf."""

from __future__ import annotations

from collections.abc import Sequence

from llmos.kernel.capabilities import MODEL_GENERATE
from llmos.kernel.dispatch import Dispatcher
from llmos.kernel.errors import ModelError
from llmos.kernel.generation import GenerationService, result
from llmos.kernel.model import ChatMessage, ModelDriver, SamplingParams
from llmos.kernel.process import Process


class KernelModelPort:
    """`llmos.kernel.memory.ModelPort` over a kernel's driver, generation service and dispatcher."""

    def __init__(self, driver: ModelDriver | None, generation: GenerationService | None,
                 dispatcher: Dispatcher) -> None:
        self._driver, self._generation, self._dispatcher = driver, generation, dispatcher

    @property
    def context_length(self) -> int:
        return self._model().context_length

    def tokenize(self, messages: Sequence[ChatMessage]) -> list[int]:
        return self._model().tokenize(messages)

    def can_generate(self, proc: Process) -> bool:
        return self._generation is not None and self._dispatcher.permits(proc, MODEL_GENERATE)

    async def generate(self, proc: Process, messages: Sequence[ChatMessage], sampling: SamplingParams, *,
                       call: str) -> str:
        async def work() -> str:
            if self._generation is None:
                raise ModelError("this kernel has no model loaded")
            job = await self._generation.submit(proc, sampling, messages=messages)
            try:
                return (await result(job)).text
            finally:
                self._generation.cancel(job)

        return await self._dispatcher.on_behalf(proc, call, MODEL_GENERATE, work)

    def _model(self) -> ModelDriver:
        if self._driver is None:
            raise ModelError("this kernel has no model loaded; a context window counts the model's tokens, so "
                             "boot it with a model")
        return self._driver
