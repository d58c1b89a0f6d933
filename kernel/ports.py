"""The narrow ports the kernel hands to the subsystems plugged into it, so that none of
them holds the kernel itself. `ModelPort` (llmos.kernel.memory) is what the memory system
may ask: the model's size, token counts, and a generation on a process's behalf."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from llmos.kernel.capabilities import MODEL_GENERATE
from llmos.kernel.dispatch import Dispatcher
from llmos.kernel.errors import ModelError
from llmos.kernel.generation import GenerationService, result
from llmos.kernel.model import ChatMessage, ModelDriver, SamplingParams
from llmos.kernel.process import Process


class KernelModelPort:
    """`llmos.kernel.memory.ModelPort` over a kernel: the driver a process's model runs on
    (`driver_for`), a loaded base model by name (`driver_named`), the generation loop that
    serves a process (`generation_for`), the dispatcher."""

    def __init__(self, driver_for: Callable[[Process], ModelDriver | None], driver_named: Callable[[str], ModelDriver],
                 generation_for: Callable[[Process], Awaitable[GenerationService]], dispatcher: Dispatcher) -> None:
        self._driver_for, self._driver_named = driver_for, driver_named
        self._generation_for, self._dispatcher = generation_for, dispatcher

    def model_name(self, proc: Process) -> str:
        return self._model(proc).name

    def context_length(self, proc: Process) -> int:
        return self._model(proc).context_length

    def tokenize(self, model: str, messages: Sequence[ChatMessage]) -> list[int]:
        return self._driver_named(model).tokenize(messages)

    def can_generate(self, proc: Process) -> bool:
        # Another base's model may be unloaded now: its next generation loads it again.
        has_model = proc.base is not None or self._driver_for(proc) is not None
        return has_model and self._dispatcher.permits(proc, MODEL_GENERATE)

    async def generate(self, proc: Process, messages: Sequence[ChatMessage], sampling: SamplingParams, *,
                       call: str) -> str:
        async def work() -> str:
            generation = await self._generation_for(proc)
            job = await generation.submit(proc, sampling, messages=messages)
            try:
                return (await result(job)).text
            finally:
                generation.cancel(job)

        return await self._dispatcher.on_behalf(proc, call, MODEL_GENERATE, work)

    def _model(self, proc: Process) -> ModelDriver:
        driver = self._driver_for(proc)
        if driver is None:
            raise ModelError("this kernel has no model loaded; a context window counts the model's tokens, so "
                             "boot it with a model")
        return driver
