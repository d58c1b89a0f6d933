"""The kernel's memory system: one store (opened on first use) and a window per process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from llmos.kernel import params
from llmos.kernel.errors import ConfigError, MemoryUnavailable, ModelError
from llmos.kernel.memory import MemoryStore
from llmos.kernel.model import ModelDriver
from llmos.memory.policies import Policy, get_policy
from llmos.memory.tokens import TokenCounter
from llmos.memory.window import Window

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.process import Process


class MemoryManager:
    """`store`: a folder or http(s)://host:port of a `chroma run` server (opened lazily: a
    kernel whose processes never page out or remember never touches it), a ready
    `MemoryStore`, or None for no store (evicted messages then stay in the kernel's memory
    and the memory syscalls fail with MemoryUnavailable). `context_budget`: tokens a window
    may hold, instead of the model's context length less the reply's room."""

    def __init__(self, store: str | Path | MemoryStore | None, *, policy: str | Policy = params.DEFAULT_CONTEXT_POLICY,
                 context_budget: int | None = None) -> None:
        if context_budget is not None and context_budget < 16:
            raise ConfigError(f"context_budget must be at least 16 tokens, not {context_budget}")
        self.policy = get_policy(policy)
        self.context_budget = context_budget
        self._spec = store if isinstance(store, (str, Path)) or store is None else None
        self._store: MemoryStore | None = None if self._spec is not None or store is None else store
        self._owned = False  # whether aclose() closes the store (only one we opened)
        self._opening = anyio.Lock()
        self._counters: dict[int, TokenCounter] = {}

    async def store(self) -> MemoryStore:
        if self._store is not None:
            return self._store
        if self._spec is None:
            raise MemoryUnavailable("this kernel has no memory store; boot it with memory='embedded' (the default), "
                                    "a folder, or a chroma server's http://host:port")
        async with self._opening:
            if self._store is None:
                from llmos.memory.store import open_store  # chromadb loads only when a store is used

                self._store = await anyio.to_thread.run_sync(open_store, self._spec)
                self._owned = True
        return self._store

    def window(self, kernel: Kernel, proc: Process) -> Window:
        if proc.context is None:
            proc.context = Window(kernel, proc, self)
        return proc.context

    def note_remembered(self, kernel: Kernel, proc: Process) -> None:
        self.window(kernel, proc).recall_active = True

    async def aclose(self) -> None:
        if self._store is not None and self._owned:
            store, self._store = self._store, None
            await store.aclose()

    # -- sizes, per model ------------------------------------------------------------------------
    @staticmethod
    def driver(kernel: Kernel) -> ModelDriver:
        if kernel.driver is None:
            raise ModelError("this kernel has no model loaded; a context window counts the model's tokens, so "
                             "boot it with a model")
        return kernel.driver

    def counter(self, kernel: Kernel) -> TokenCounter:
        driver = self.driver(kernel)
        if id(driver) not in self._counters:
            self._counters[id(driver)] = TokenCounter(driver)
        return self._counters[id(driver)]

    def budget(self, driver: ModelDriver) -> int:
        """Tokens a prompt may hold: the model's context length less the reply's room."""
        if self.context_budget is not None:
            return min(self.context_budget, driver.context_length - 1)
        return driver.context_length - min(params.CONTEXT_REPLY_TOKENS, driver.context_length // 4)
