"""Memory syscalls: remember, recall (search by meaning), forget.

Each works in a namespace: by default the process's own (its name, so an agent that runs
again finds what it remembered). Another namespace NS needs "memory.read.NS" to recall
from it and "memory.write.NS" to remember into it or forget from it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar

from pydantic import Field

from llmos.kernel import capabilities, params
from llmos.kernel.abi import Request
from llmos.kernel.errors import MemoryUnavailable, NoSuchMemory, PermissionDenied
from llmos.kernel.kernel import Kernel
from llmos.kernel.memory import MemoryItem, MemoryStore, Metadata
from llmos.kernel.process import Process

Namespace = Field(default=None, min_length=1, max_length=200)


class Remember(Request):
    call: ClassVar[str] = "remember"
    capability: ClassVar[str | None] = capabilities.MEMORY
    blocking: ClassVar[bool] = True

    text: str = Field(min_length=1)
    metadata: Metadata = Field(default_factory=dict)  # str, int, float or bool values, to filter `recall` by
    namespace: str | None = Namespace


class Recall(Request):
    call: ClassVar[str] = "recall"
    capability: ClassVar[str | None] = capabilities.MEMORY
    blocking: ClassVar[bool] = True

    query: str = Field(min_length=1)
    k: int = Field(default=5, ge=1, le=params.MAX_RECALL_K)
    where: dict[str, Any] | None = None  # a chromadb metadata filter: {"topic": "work"}, {"n": {"$gt": 3}}
    namespace: str | None = Namespace


class Forget(Request):
    call: ClassVar[str] = "forget"
    capability: ClassVar[str | None] = capabilities.MEMORY
    blocking: ClassVar[bool] = True

    id: str = Field(min_length=1)
    namespace: str | None = Namespace


def namespace(caller: Process, asked: str | None, access: str) -> str:
    """The namespace a call works in: the caller's own, or one its capabilities grant."""
    if asked is None or asked == caller.name:
        return caller.name
    wanted = f"{access}.{asked}"
    if not capabilities.grants(caller.capabilities, wanted):
        raise PermissionDenied(f"namespace {asked!r} is not process {caller.pid}'s own ({caller.name!r}); using it "
                               f"needs capability {wanted!r}")
    return asked


async def _store(kernel: Kernel) -> MemoryStore:
    if kernel.memory is None:
        raise MemoryUnavailable("this kernel has no memory system")
    return await kernel.memory.store()


async def sys_remember(kernel: Kernel, caller: Process, req: Remember) -> str:
    ns = namespace(caller, req.namespace, capabilities.MEMORY_WRITE)
    store = await _store(kernel)
    item_id = uuid.uuid4().hex
    meta: Metadata = {"kind": "note", "pid": caller.pid, "at": time.time(), **req.metadata}
    await store.add(ns, [req.text], [meta], [item_id])
    if ns == caller.name and kernel.memory is not None:
        kernel.memory.note_remembered(kernel, caller)
    return item_id


async def sys_recall(kernel: Kernel, caller: Process, req: Recall) -> list[MemoryItem]:
    ns = namespace(caller, req.namespace, capabilities.MEMORY_READ)
    return await (await _store(kernel)).query(ns, req.query, req.k, req.where)


async def sys_forget(kernel: Kernel, caller: Process, req: Forget) -> None:
    ns = namespace(caller, req.namespace, capabilities.MEMORY_WRITE)
    store = await _store(kernel)
    if not await store.get(ns, [req.id]):
        raise NoSuchMemory(f"no memory {req.id!r} in namespace {ns!r}")
    await store.delete(ns, [req.id])


HANDLERS = {Remember: sys_remember, Recall: sys_recall, Forget: sys_forget}
