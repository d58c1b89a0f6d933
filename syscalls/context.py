"""Context syscalls: a process manages its own context window.

The window is what `chat(message)` talks from: pinned entries (never evicted), a running
summary of what was evicted, and recent entries, counted in the model's tokens.
"""

from __future__ import annotations

from typing import ClassVar

from llmos.kernel.abi import Request
from llmos.kernel.errors import MemoryUnavailable
from llmos.kernel.kernel import Kernel
from llmos.kernel.memory import ContextEntry, ContextSnapshot, ContextStats, ContextWindow
from llmos.kernel.model import Role
from llmos.kernel.process import Process


class ContextAppend(Request[ContextStats]):
    """Add a message to the window (evicting the oldest if it overflows)."""

    call: ClassVar[str] = "context.append"
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("content",)

    content: str
    role: Role = "user"
    pin: bool = False


class ContextPin(Request[ContextEntry]):
    """Pin (or unpin) the entry at `index` (negative counts from the end)."""

    call: ClassVar[str] = "context.pin"
    positional: ClassVar[tuple[str, ...]] = ("index", "pinned")

    index: int
    pinned: bool = True


class ContextClear(Request[ContextStats]):
    """Archive the window's unpinned entries and its summary, and empty it of them."""

    call: ClassVar[str] = "context.clear"
    blocking: ClassVar[bool] = True

    keep_pinned: bool = True


class ContextSave(Request[ContextSnapshot]):
    """The window's contents, JSON-able, to `restore` later."""

    call: ClassVar[str] = "context.snapshot"


class ContextRestore(Request[ContextStats]):
    """Replace the window's contents with a snapshot."""

    call: ClassVar[str] = "context.restore"
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("snapshot",)

    snapshot: ContextSnapshot


class ContextInfo(Request[ContextStats]):
    """The window's token accounting."""

    call: ClassVar[str] = "context.stats"


def window(kernel: Kernel, caller: Process) -> ContextWindow:
    if kernel.memory is None:
        raise MemoryUnavailable("this kernel has no memory system, so no context windows")
    return kernel.memory.window(caller)


async def sys_context_append(kernel: Kernel, caller: Process, req: ContextAppend) -> ContextStats:
    return await window(kernel, caller).append(ContextEntry(role=req.role, content=req.content, pinned=req.pin))


async def sys_context_pin(kernel: Kernel, caller: Process, req: ContextPin) -> ContextEntry:
    return await window(kernel, caller).pin(req.index, req.pinned)


async def sys_context_clear(kernel: Kernel, caller: Process, req: ContextClear) -> ContextStats:
    return await window(kernel, caller).clear(req.keep_pinned)


async def sys_context_snapshot(kernel: Kernel, caller: Process, req: ContextSave) -> ContextSnapshot:
    return window(kernel, caller).snapshot()


async def sys_context_restore(kernel: Kernel, caller: Process, req: ContextRestore) -> ContextStats:
    return await window(kernel, caller).restore(req.snapshot)


async def sys_context_stats(kernel: Kernel, caller: Process, req: ContextInfo) -> ContextStats:
    return await window(kernel, caller).stats()


HANDLERS = {
    ContextAppend: sys_context_append, ContextPin: sys_context_pin, ContextClear: sys_context_clear,
    ContextSave: sys_context_snapshot, ContextRestore: sys_context_restore, ContextInfo: sys_context_stats,
}
