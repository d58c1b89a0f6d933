"""Message passing: send to a pid or a unique name, receive with a timeout."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from llmos.kernel import capabilities
from llmos.kernel.abi import Request
from llmos.kernel.ipc import Message
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import Process


class Send(Request):
    call: ClassVar[str] = "send"
    capability: ClassVar[str | None] = capabilities.IPC

    to: int | str  # a pid, or the name of exactly one live process
    payload: Any  # anything JSON-serializable; the receiver gets its own copy


class Recv(Request):
    call: ClassVar[str] = "recv"
    capability: ClassVar[str | None] = capabilities.IPC
    blocking: ClassVar[bool] = True

    timeout: float | None = Field(default=None, ge=0)


async def sys_send(kernel: Kernel, caller: Process, req: Send) -> Message:
    return kernel.send(req.to, req.payload, sender=caller)


async def sys_recv(kernel: Kernel, caller: Process, req: Recv) -> Message:
    return await kernel.recv(caller, req.timeout)


HANDLERS = {Send: sys_send, Recv: sys_recv}
