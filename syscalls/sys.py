"""`Sys`: the handle an app receives. Every method is one syscall through the kernel."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from llmos.kernel.ipc import Message
from llmos.kernel.model import ChatMessage
from llmos.kernel.process import ExitStatus, Process, ProcessInfo, Quotas
from llmos.kernel.memory import MemoryItem, Metadata
from llmos.syscalls.context import ContextHandle
from llmos.syscalls.generate import Reply, TextStream
from llmos.syscalls.tools import ToolSpec

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel


class Sys:
    """What a process can do. Errors are `llmos.syscalls.errors.SyscallError` subclasses."""

    __slots__ = ("_kernel", "_proc")

    def __init__(self, kernel: Kernel, proc: Process) -> None:
        self._kernel = kernel
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def name(self) -> str:
        return self._proc.name

    async def syscall(self, request: Any) -> Any:
        """Issue any syscall: a request object, or a dict {"call": name, **arguments}."""
        return await self._kernel.syscall(self._proc, request)

    async def _call(self, call: str, **arguments: Any) -> Any:
        arguments["call"] = call
        return await self._kernel.syscall(self._proc, arguments)

    # -- the model ----------------------------------------------------------------------------
    @overload
    async def chat(self, message: str | None = None, *, stream: Literal[False] = False,
                   **options: Any) -> Reply: ...
    @overload
    async def chat(self, message: str | None = None, *, stream: Literal[True], **options: Any) -> TextStream: ...

    async def chat(self, message: str | None = None, *, messages: Sequence[ChatMessage | dict[str, str]] | None = None,
                   system: str | None = None, stream: bool = False, **sampling: Any) -> Reply | TextStream:
        """Say `message` in this process's conversation and get the model's reply (which
        joins the conversation), or chat statelessly over explicit `messages`.
        Sampling options: max_tokens, temperature (0 = greedy), top_p, seed, stop.
        `json_schema=`: the reply is JSON following it. `tools=[names]`: the model may call
        one of those tools instead of answering; the calls are in `reply.tool_calls`."""
        return await self._call("chat", message=message, messages=messages, system=system, stream=stream,
                                **sampling)

    async def generate(self, prompt: str, *, stream: bool = False, **sampling: Any) -> Reply | TextStream:
        """Continue `prompt` as plain text (no chat template)."""
        return await self._call("generate", prompt=prompt, stream=stream, **sampling)

    # -- processes ------------------------------------------------------------------------------
    async def spawn(self, app: Any, *args: Any, name: str | None = None, priority: int | None = None,
                    caps: Iterable[str] | None = None, quotas: Quotas | dict[str, Any] | None = None) -> ProcessInfo:
        return await self._call("spawn", app=app, args=args, name=name, priority=priority,
                                caps=None if caps is None else frozenset(caps), quotas=quotas)

    async def wait(self, pid: int, timeout: float | None = None) -> ExitStatus:
        return await self._call("wait", pid=pid, timeout=timeout)

    async def kill(self, pid: int, reason: str = "killed") -> None:
        await self._call("kill", pid=pid, reason=reason)

    async def suspend(self, pid: int) -> None:
        await self._call("suspend", pid=pid)

    async def resume(self, pid: int) -> None:
        await self._call("resume", pid=pid)

    async def nice(self, priority: int, pid: int | None = None) -> None:
        """Set the priority (nice value, -20..19, lower first) of a process, by default this one."""
        await self._call("nice", pid=self.pid if pid is None else pid, priority=priority)

    async def ps(self, include_ended: bool = False) -> list[ProcessInfo]:
        return await self._call("ps", include_ended=include_ended)

    async def getpid(self) -> int:
        return await self._call("getpid")

    async def sleep(self, seconds: float) -> None:
        await self._call("sleep", seconds=seconds)

    # -- messages -----------------------------------------------------------------------------
    async def send(self, to: int | str, payload: Any) -> Message:
        return await self._call("send", to=to, payload=payload)

    async def recv(self, timeout: float | None = None) -> Message:
        return await self._call("recv", timeout=timeout)

    async def subscribe(self, topic: str) -> None:
        """Receive (with `recv`) every message later published to `topic`."""
        await self._call("subscribe", topic=topic)

    async def unsubscribe(self, topic: str) -> None:
        await self._call("unsubscribe", topic=topic)

    async def publish(self, topic: str, payload: Any) -> int:
        """Send a copy to every subscriber of `topic`; returns how many received it."""
        return await self._call("publish", topic=topic, payload=payload)

    # -- the user -------------------------------------------------------------------------------
    async def write(self, text: str) -> None:
        """Show text to the user (the terminal of `llmos run` or the shell); no newline is added."""
        await self._call("write", text=text)

    async def ask_user(self, question: str, *, timeout: float | None = None) -> str:
        """Ask the user a question and wait for the answer (a human-in-the-loop step)."""
        return await self._call("ask_user", question=question, timeout=timeout)

    # -- memory -------------------------------------------------------------------------------
    async def remember(self, text: str, metadata: Metadata | None = None, *, namespace: str | None = None) -> str:
        """Store `text` (with optional scalar metadata) in this process's namespace; returns its id."""
        return await self._call("remember", text=text, metadata=metadata or {}, namespace=namespace)

    async def recall(self, query: str, k: int = 5, *, where: dict[str, Any] | None = None,
                     namespace: str | None = None) -> list[MemoryItem]:
        """The `k` stored items closest in meaning to `query`, best first, each with its score."""
        return await self._call("recall", query=query, k=k, where=where, namespace=namespace)

    async def forget(self, id: str, *, namespace: str | None = None) -> None:  # noqa: A002 - the item's id
        await self._call("forget", id=id, namespace=namespace)

    # -- tools ----------------------------------------------------------------------------------
    async def list_tools(self) -> list[ToolSpec]:
        """The tools this process may call (its capabilities grant "tool.NAME"), by name."""
        return await self._call("list_tools")

    async def call_tool(self, name: str, /, *, timeout: float | None = None, **arguments: Any) -> Any:
        """Call tool `name` with keyword `arguments`, validated against its schema first;
        returns its JSON-able result. `timeout` (seconds) may shorten the tool's own. (A tool
        argument named `timeout`: `sys.syscall(CallTool(name=..., arguments={...}))`.)"""
        return await self._call("call_tool", name=name, arguments=arguments, timeout=timeout)

    @property
    def context(self) -> ContextHandle:
        """This process's context window: append, pin, clear, snapshot, restore, stats."""
        return ContextHandle(self)
