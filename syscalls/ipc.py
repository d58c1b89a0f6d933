"""Message passing: send to a pid or a unique name, publish to a named topic, receive with a timeout."""

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


TopicName = Field(min_length=1, max_length=128)


class Subscribe(Request):
    call: ClassVar[str] = "subscribe"
    capability: ClassVar[str | None] = capabilities.IPC

    topic: str = TopicName


class Unsubscribe(Request):
    call: ClassVar[str] = "unsubscribe"
    capability: ClassVar[str | None] = capabilities.IPC

    topic: str = TopicName


class Publish(Request):
    call: ClassVar[str] = "publish"
    capability: ClassVar[str | None] = capabilities.IPC

    topic: str = TopicName
    payload: Any  # each subscriber gets its own copy, as a Message whose `topic` is set


async def sys_send(kernel: Kernel, caller: Process, req: Send) -> Message:
    return kernel.send(req.to, req.payload, sender=caller)


async def sys_recv(kernel: Kernel, caller: Process, req: Recv) -> Message:
    return await kernel.recv(caller, req.timeout)


async def sys_subscribe(kernel: Kernel, caller: Process, req: Subscribe) -> None:
    kernel.subscribe(caller, req.topic)


async def sys_unsubscribe(kernel: Kernel, caller: Process, req: Unsubscribe) -> None:
    kernel.unsubscribe(caller, req.topic)


async def sys_publish(kernel: Kernel, caller: Process, req: Publish) -> int:
    return kernel.publish(req.topic, req.payload, sender=caller)


HANDLERS = {Send: sys_send, Recv: sys_recv, Subscribe: sys_subscribe, Unsubscribe: sys_unsubscribe,
            Publish: sys_publish}
