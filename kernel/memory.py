"""What the kernel needs from memory: a store of searchable items, and context windows.

The kernel never imports chromadb or an embedder: llmos.memory implements these
protocols and the composition root (llmos.boot) plugs them in as `kernel.memory`.

A *namespace* isolates one agent's items from another's; a process's own namespace is its
name, so an agent that runs again finds what it remembered. A *context window* is a
process's conversation as the model sees it, counted in the model's own tokens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict, Field

from llmos.kernel import params
from llmos.kernel.errors import MemoryUnavailable, SyscallError
from llmos.kernel.model import ChatMessage, Role, SamplingParams

if TYPE_CHECKING:
    from llmos.kernel.process import Process

Scalar = str | int | float | bool
Metadata = dict[str, Scalar]
T = TypeVar("T")


class MemoryItem(BaseModel):
    """One stored text, as `recall` returns it."""

    model_config = ConfigDict(frozen=True)

    id: str
    text: str
    namespace: str
    metadata: Metadata = Field(default_factory=dict)
    score: float | None = None  # cosine similarity to the query (1 = same meaning); None from `get`


class MemoryStore(Protocol):
    """Texts with metadata, searchable by meaning, kept per namespace. Every method may
    block on I/O or embedding, so every method is async (implementations use threads)."""

    location: str  # where the items live, for messages: a folder or a server URL

    async def add(self, namespace: str, texts: Sequence[str], metadatas: Sequence[Metadata],
                  ids: Sequence[str]) -> None:
        """Store (or overwrite, by id) the texts."""

    async def query(self, namespace: str, text: str, k: int, where: Metadata | None = None) -> list[MemoryItem]:
        """The `k` items most similar to `text`, best first, optionally filtered by metadata."""

    async def get(self, namespace: str, ids: Sequence[str]) -> list[MemoryItem]:
        """The items with these ids that exist."""

    async def delete(self, namespace: str, ids: Sequence[str]) -> None: ...

    async def count(self, namespace: str) -> int: ...

    async def aclose(self) -> None:
        """Release the store (and its writer lock)."""


class BoundedStore:
    """A `MemoryStore` whose every call answers: within `timeout_s` (else MemoryUnavailable,
    "did not answer"), and with a typed error (a failure that is not a SyscallError becomes
    MemoryUnavailable, naming it). The memory manager hands out its store wrapped in one, so
    a stuck or broken store fails the call that met it, never a process forever; a context
    window, which takes MemoryUnavailable as "no archive now", goes on without it. The bound
    holds for stores that honour cancellation (a store that blocks a worker thread is waited
    for until that thread returns)."""

    def __init__(self, store: MemoryStore, timeout_s: float = params.STORE_TIMEOUT_S) -> None:
        self.inner = store
        self.timeout_s = timeout_s

    @property
    def location(self) -> str:
        return self.inner.location

    async def _bounded(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        with anyio.move_on_after(self.timeout_s):
            try:
                return await call()
            except SyscallError:
                raise
            except Exception as exc:
                raise MemoryUnavailable(f"the memory store at {self.location} failed to {what}: "
                                        f"{type(exc).__name__}: {exc}") from exc
        raise MemoryUnavailable(f"the memory store at {self.location} did not {what} within {self.timeout_s:g} s")

    async def add(self, namespace: str, texts: Sequence[str], metadatas: Sequence[Metadata],
                  ids: Sequence[str]) -> None:
        await self._bounded("store items", lambda: self.inner.add(namespace, texts, metadatas, ids))

    async def query(self, namespace: str, text: str, k: int, where: Metadata | None = None) -> list[MemoryItem]:
        return await self._bounded("search", lambda: self.inner.query(namespace, text, k, where))

    async def get(self, namespace: str, ids: Sequence[str]) -> list[MemoryItem]:
        return await self._bounded("read items", lambda: self.inner.get(namespace, ids))

    async def delete(self, namespace: str, ids: Sequence[str]) -> None:
        await self._bounded("delete items", lambda: self.inner.delete(namespace, ids))

    async def count(self, namespace: str) -> int:
        return await self._bounded("count items", lambda: self.inner.count(namespace))

    async def aclose(self) -> None:
        await self.inner.aclose()


class ContextEntry(BaseModel):
    """One message in a context window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str
    pinned: bool = False  # never evicted (a system prompt, a persona)
    tokens: int | None = Field(default=None, exclude=True)  # the model's count, filled in by the window


class ContextSnapshot(BaseModel):
    """A window's contents, to save (it is JSON-able) and `restore` later."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entries: tuple[ContextEntry, ...] = ()
    summary: str = ""  # the running summary of what was evicted


class ContextStats(BaseModel):
    """A window's token accounting, in the model's tokens."""

    model_config = ConfigDict(frozen=True)

    policy: str
    context_length: int  # the model's
    budget: int  # the window: what a prompt may hold (context_length less the reply's room)
    used: int  # tokens of the entries in the window now
    pinned_tokens: int
    summary_tokens: int
    entries: int
    pinned: int
    evicted: int  # messages paged out to the archive so far
    summaries: int  # summary generations made on the process's behalf
    summary_failures: int  # summary generations that failed (the evicted text is archived all the same)
    unarchived: int  # evicted messages held in the kernel's memory because the store could not take them
    recalled: int  # archived items put into the last prompt
    last_prompt_tokens: int  # the exact size of the last prompt sent


class ChatPrompt(NamedTuple):
    """A prompt the window assembled, with its token ids (the chat template applied once)."""

    messages: tuple[ChatMessage, ...]
    token_ids: tuple[int, ...]


class ContextWindow(Protocol):
    """A process's conversation as the model sees it. Pinned entries are never evicted;
    when the others would overflow the budget, the oldest go to the archive."""

    async def prompt(self, message: str, system: str | None = None) -> ChatPrompt:
        """The prompt to generate from for `message` (which is not yet committed): pinned
        entries, summary, recalled items and recent entries, within the budget, and its
        token ids. Raises ContextOverflow if even the pinned entries and `message` cannot fit."""

    def commit(self, message: str, reply: str) -> None:
        """A completed turn joins the window."""

    async def append(self, entry: ContextEntry) -> ContextStats: ...

    async def pin(self, index: int, pinned: bool = True) -> ContextEntry: ...

    async def clear(self, keep_pinned: bool = True) -> ContextStats:
        """Archive the unpinned entries (and the summary) and empty the window of them."""

    def snapshot(self) -> ContextSnapshot: ...

    async def restore(self, snapshot: ContextSnapshot) -> ContextStats: ...

    async def stats(self) -> ContextStats: ...


class ModelPort(Protocol):
    """What the memory system may ask of the kernel, and nothing more: the model's size,
    token counts, and a generation on a process's behalf (the kernel implements it in
    llmos.kernel.ports and hands it over with `MemorySystem.attach`)."""

    def model_name(self, proc: Process) -> str:
        """The base model `proc` generates with now (its token counts are that model's)."""

    def context_length(self, proc: Process) -> int:
        """That model's context length; ModelError for a kernel without a model."""

    def tokenize(self, model: str, messages: Sequence[ChatMessage]) -> list[int]:
        """The chat prompt's token ids in base model `model` (a `model_name`), its template
        applied (blocking: long texts belong in a worker thread); ModelError if it is not
        loaded now. A prompt too long for the model is tokenized whole."""

    def can_generate(self, proc: Process) -> bool:
        """Whether the kernel has a model and `proc` may use it."""

    async def generate(self, proc: Process, messages: Sequence[ChatMessage], sampling: SamplingParams, *,
                       call: str) -> str:
        """The reply to `messages`, generated on `proc`'s behalf: checked against its
        capabilities, accounted to it and traced as `call`, like a syscall of its own."""


class MemorySystem(Protocol):
    """The kernel's memory: the store (opened on first use) and each process's window."""

    def attach(self, port: ModelPort) -> None:
        """Called once by the kernel that owns this memory system, before any window is made."""

    async def store(self) -> MemoryStore:
        """The store; raises MemoryUnavailable (or StoreLocked) if there is none to open."""

    def window(self, proc: Process) -> ContextWindow:
        """The process's window, made on first use."""

    def note_remembered(self, proc: Process) -> None:
        """The process stored an item in its own namespace: its prompts may now recall."""

    async def aclose(self) -> None: ...
