"""Message passing: send to a pid or a unique name, publish to a named topic, receive with a timeout."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from llmos.kernel import capabilities
from llmos.kernel.abi import Request
from llmos.kernel.ipc import Message
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import Process


class Send(Request[Message]):
    """Deliver a copy of `payload` to one process's mailbox, without blocking."""

    call: ClassVar[str] = "send"
    capability: ClassVar[str | None] = capabilities.IPC
    positional: ClassVar[tuple[str, ...]] = ("to", "payload")

    to: int | str  # a pid, or the name of exactly one live process
    payload: Any  # anything JSON-serializable; the receiver gets its own copy


class Recv(Request[Message]):
    """The next message in the mailbox, waiting at most `timeout` seconds for one."""

    call: ClassVar[str] = "recv"
    capability: ClassVar[str | None] = capabilities.IPC
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("timeout",)

    timeout: float | None = Field(default=None, ge=0)

    def ingress(self, kernel: Kernel, caller: Process, answer: Any) -> str | None:
        return untrusted_message(answer)


TopicName = Field(min_length=1, max_length=128)


class Subscribe(Request[None]):
    """Receive (with `recv`) every message later published to `topic`."""

    call: ClassVar[str] = "subscribe"
    capability: ClassVar[str | None] = capabilities.IPC
    positional: ClassVar[tuple[str, ...]] = ("topic",)

    topic: str = TopicName

    def reapply_on_replay(self) -> bool:
        return True  # a resumed process is subscribed again, in its new kernel


class Unsubscribe(Request[None]):
    call: ClassVar[str] = "unsubscribe"
    capability: ClassVar[str | None] = capabilities.IPC
    positional: ClassVar[tuple[str, ...]] = ("topic",)

    topic: str = TopicName

    def reapply_on_replay(self) -> bool:
        return True  # a resumed process is subscribed again, in its new kernel


class Publish(Request[int]):
    """Send a copy to every subscriber of `topic`; returns how many received it."""

    call: ClassVar[str] = "publish"
    capability: ClassVar[str | None] = capabilities.IPC
    positional: ClassVar[tuple[str, ...]] = ("topic", "payload")

    topic: str = TopicName
    payload: Any  # each subscriber gets its own copy, as a Message whose `topic` is set


def untrusted_message(message: Any) -> str | None:
    if isinstance(message, Message) and message.untrusted:
        return f"a message from process {message.sender} ({message.sender_name}), which had read untrusted text"
    return None


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
