"""Memory syscalls: remember, recall (search by meaning), forget.

Each works in a namespace: by default the process's own (its name, so an agent that runs
again finds what it remembered). Another namespace NS needs "memory.read.NS" to recall
from it and "memory.write.NS" to remember into it or forget from it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import Field

from llmos.kernel import capabilities, params
from llmos.kernel.abi import Request
from llmos.kernel.capabilities import Need
from llmos.kernel.errors import MemoryUnavailable, NoSuchMemory
from llmos.kernel.journal import idempotency_key, key_id
from llmos.kernel.kernel import Kernel
from llmos.kernel.memory import MemoryItem, MemoryStore, Metadata
from llmos.kernel.process import Process
from llmos.kernel.security import NONE, UNTRUSTED_MEMORY, Effects

Namespace = Field(default=None, min_length=1, max_length=200)


def _other_namespace(request: Any, caller: Process) -> str | None:
    return request.namespace if request.namespace is not None and request.namespace != caller.name else None


def _in_namespace(request: Any, caller: Process, access: str) -> Iterator[Need]:
    """For a namespace other than the caller's own: `access`.NAMESPACE (besides `memory`)."""
    if request.namespace is not None and request.namespace != caller.name:
        yield f"{access}.{request.namespace}"


class Remember(Request[str]):
    """Store `text` (with optional scalar metadata) in this process's namespace; returns its id."""

    call: ClassVar[str] = "remember"
    capability: ClassVar[str | None] = capabilities.MEMORY
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("text", "metadata")

    text: str = Field(min_length=1)
    metadata: Metadata | None = None  # str, int, float or bool values, to filter `recall` by
    namespace: str | None = Namespace

    def needs(self, caller: Process) -> Iterator[Need]:
        return _in_namespace(self, caller, capabilities.MEMORY_WRITE)

    def effects(self, kernel: Kernel, caller: Process) -> Effects:
        other = _other_namespace(self, caller)  # another process's namespace: it will read this
        return NONE if other is None else Effects(audit=f"writes the memory of namespace {other!r}",
                                                  egress=f"the memory of namespace {other!r}")


class Recall(Request[list[MemoryItem]]):
    """The `k` stored items closest in meaning to `query`, best first, each with its score."""

    call: ClassVar[str] = "recall"
    capability: ClassVar[str | None] = capabilities.MEMORY
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("query", "k")

    query: str = Field(min_length=1)
    k: int = Field(default=5, ge=1, le=params.MAX_RECALL_K)
    where: dict[str, Any] | None = None  # a chromadb metadata filter: {"topic": "work"}, {"n": {"$gt": 3}}
    namespace: str | None = Namespace

    def needs(self, caller: Process) -> Iterator[Need]:
        return _in_namespace(self, caller, capabilities.MEMORY_READ)

    def effects(self, kernel: Kernel, caller: Process) -> Effects:
        other = _other_namespace(self, caller)
        return NONE if other is None else Effects(audit=f"reads the memory of namespace {other!r}")

    def ingress(self, kernel: Kernel, caller: Process, answer: Any) -> str | None:
        if not isinstance(answer, list):  # an error: no memory came back
            return None
        other = _other_namespace(self, caller)
        if other is not None and answer:  # what another process wrote
            return f"memories of namespace {other!r}"
        if any(item.metadata.get(UNTRUSTED_MEMORY) for item in answer or ()):
            return "memories written by a process that had read untrusted text"
        return None


class Forget(Request[None]):
    """Delete the item `id` from the namespace (ENOENT if it is not there)."""

    call: ClassVar[str] = "forget"
    capability: ClassVar[str | None] = capabilities.MEMORY
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("id",)

    id: str = Field(min_length=1)
    namespace: str | None = Namespace

    def needs(self, caller: Process) -> Iterator[Need]:
        return _in_namespace(self, caller, capabilities.MEMORY_WRITE)

    def effects(self, kernel: Kernel, caller: Process) -> Effects:
        other = _other_namespace(self, caller)
        return NONE if other is None else Effects(audit=f"deletes from the memory of namespace {other!r}")


async def _store(kernel: Kernel) -> MemoryStore:
    if kernel.memory is None:
        raise MemoryUnavailable("this kernel has no memory system")
    return await kernel.memory.store()


async def sys_remember(kernel: Kernel, caller: Process, req: Remember) -> str:
    ns = req.namespace or caller.name
    store = await _store(kernel)
    item_id = key_id(idempotency_key())  # a durable process's write, replayed, overwrites itself
    meta: Metadata = {"kind": "note", "pid": caller.pid, "at": time.time(), **(req.metadata or {})}
    if caller.untrusted:  # whoever recalls it reads what untrusted text may have steered (kernel/security.py)
        meta[UNTRUSTED_MEMORY] = True
    await store.add(ns, [req.text], [meta], [item_id])
    if ns == caller.name and kernel.memory is not None:
        kernel.memory.note_remembered(caller)
    return item_id


async def sys_recall(kernel: Kernel, caller: Process, req: Recall) -> list[MemoryItem]:
    return await (await _store(kernel)).query(req.namespace or caller.name, req.query, req.k, req.where)


async def sys_forget(kernel: Kernel, caller: Process, req: Forget) -> None:
    ns = req.namespace or caller.name
    store = await _store(kernel)
    if not await store.get(ns, [req.id]):
        raise NoSuchMemory(f"no memory {req.id!r} in namespace {ns!r}")
    await store.delete(ns, [req.id])


HANDLERS = {Remember: sys_remember, Recall: sys_recall, Forget: sys_forget}
