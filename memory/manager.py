"""The kernel's memory system: one store (opened on first use) and a window per process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from llmos.kernel import params
from llmos.kernel.errors import ConfigError, MemoryUnavailable
from llmos.kernel.memory import BoundedStore, MemoryStore, ModelPort
from llmos.memory.policies import Policy, get_policy
from llmos.memory.tokens import TokenCounter
from llmos.memory.window import Window

if TYPE_CHECKING:
    from llmos.kernel.process import Process
    from llmos.memory.embedder import Embedder


class MemoryManager:
    """`store`: a folder or http(s)://host:port of a `chroma run` server (opened lazily: a
    kernel whose processes never page out or remember never touches it), a ready
    `MemoryStore`, or None for no store (evicted messages then stay in the kernel's memory
    and the memory syscalls fail with MemoryUnavailable). `context_budget`: tokens a window
    may hold, instead of the model's context length less the reply's room. `embedder`: the
    model a store opened from a folder or server embeds with (llmos.boot gives the drivers' one)."""

    def __init__(self, store: str | Path | MemoryStore | None, *, policy: str | Policy = params.DEFAULT_CONTEXT_POLICY,
                 context_budget: int | None = None, embedder: Embedder | None = None) -> None:
        if context_budget is not None and context_budget < 16:
            raise ConfigError(f"context_budget must be at least 16 tokens, not {context_budget}")
        self.policy = get_policy(policy)
        self.context_budget = context_budget
        self._spec = store if isinstance(store, (str, Path)) or store is None else None
        self._store: MemoryStore | None = None if self._spec is not None or store is None else store
        self._embedder = embedder
        self._owned = False  # whether aclose() closes the store (only one we opened)
        self._opening = anyio.Lock()
        # Every store call answers within this many seconds, with a typed error if it fails
        # (BoundedStore): a stuck store fails the call that met it, not the process forever.
        self.store_timeout_s = params.STORE_TIMEOUT_S

    async def store(self) -> MemoryStore:
        return BoundedStore(await self._open(), self.store_timeout_s)

    async def _open(self) -> MemoryStore:
        if self._store is not None:
            return self._store
        if self._spec is None:
            raise MemoryUnavailable("this kernel has no memory store; boot it with memory='embedded' (the default), "
                                    "a folder, or a chroma server's http://host:port")
        if self._embedder is None:
            raise MemoryUnavailable(f"the memory store {self._spec} cannot be opened: this kernel has no embedding "
                                    "model (boot it with llmos.boot(), which gives it one)")
        async with self._opening:
            if self._store is None:
                from llmos.memory.store import open_store  # chromadb loads only when a store is used

                self._store = await anyio.to_thread.run_sync(open_store, self._spec, self._embedder)
                self._owned = True
        return self._store

    def attach(self, port: ModelPort) -> None:
        self.port = port
        self._counters: dict[str, TokenCounter] = {}  # by model name: each model counts in its own tokens

    def counter(self, model: str) -> TokenCounter:
        """The token counter of base model `model` (a `ModelPort.model_name`)."""
        if model not in self._counters:
            self._counters[model] = TokenCounter(lambda messages: self.port.tokenize(model, messages))
        return self._counters[model]

    def window(self, proc: Process) -> Window:
        if proc.context is None:
            proc.context = Window(self.port, proc, self)
        return proc.context

    def note_remembered(self, proc: Process) -> None:
        self.window(proc).recall_active = True

    async def aclose(self) -> None:
        if self._store is not None and self._owned:
            store, self._store = self._store, None
            await store.aclose()

    # -- sizes ------------------------------------------------------------------------------------------
    def budget(self, context_length: int) -> int:
        """Tokens a prompt may hold: the model's context length less the reply's room."""
        if self.context_budget is not None:
            return min(self.context_budget, context_length - 1)
        return context_length - min(params.CONTEXT_REPLY_TOKENS, context_length // 4)
