"""Tool syscalls: list the tools the caller may use, and call one.

A process may call tool NAME only if it holds "tool.NAME" (or a wildcard above it:
"tool.*", "tool.SERVER.*"). Every call has a timeout: the tool's own, or a shorter one
the caller asks for. The tool's time is accounted to the caller (`stats.tool_time_s`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
from pydantic import Field

from llmos.kernel import capabilities, params
from llmos.kernel.abi import Request
from llmos.kernel.capabilities import NET, Need
from llmos.kernel.errors import NoSuchTool, SyscallError, ToolTimeout, ToolUnavailable
from llmos.kernel.journal import current_step_key
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import Process
from llmos.kernel.security import NONE, Effects
from llmos.kernel.tools import ToolContext, ToolProvider, ToolSpec


def tool_capability(name: str) -> str:
    return f"{capabilities.TOOL}.{name}"


class CallTool(Request[Any]):
    """Call tool `name` with keyword `arguments`, validated against its schema first;
    returns its JSON-able result. `timeout` (seconds) may shorten the tool's own. (A tool
    argument named `timeout`: `sys.syscall(CallTool(name=..., arguments={...}))`.)"""

    call: ClassVar[str] = "call_tool"
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("name",)
    keywords: ClassVar[str | None] = "arguments"

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, le=params.MAX_TOOL_TIMEOUT_S)  # at most the tool's own

    def needs(self, caller: Process) -> Iterator[Need]:
        yield tool_capability(self.name)

    def effects(self, kernel: Kernel, caller: Process) -> Effects:
        spec = kernel.tools.get(self.name) if kernel.tools is not None else None
        if spec is None:
            return NONE
        network = spec.sandboxed and kernel.dispatcher.permits(caller, NET)  # its jail has the network
        sends = "the network" if network else f"tool {self.name!r} can send data out" if spec.sends_data else None
        audit = [why for why, yes in ((f"tool {self.name!r} has side effects", not spec.read_only),
                                      ("it may reach the network", network)) if yes]
        return Effects(audit="; ".join(audit) or None, egress=sends)

    def ingress(self, kernel: Kernel, caller: Process, answer: Any) -> str | None:
        """What the tool returned, or the message of the error it raised (a tool's own text:
        an exception's message, a remote server's error, a jailed tool's stderr)."""
        spec = kernel.tools.get(self.name) if kernel.tools is not None else None
        if spec is None or spec.trusted_output or not kernel.dispatcher.permits(caller, tool_capability(self.name)):
            return None  # no such tool, or it never ran: nothing of it came back
        return f"the {'error' if isinstance(answer, SyscallError) else 'result'} of tool {self.name!r}"


class ListTools(Request[list[ToolSpec]]):
    """The tools this process may call (its capabilities grant "tool.NAME"), by name."""

    call: ClassVar[str] = "list_tools"


def provider(kernel: Kernel) -> ToolProvider:
    if kernel.tools is None:
        raise ToolUnavailable("this kernel has no tools; boot it with llmos.boot() to get the built-in ones")
    return kernel.tools


def allowed(kernel: Kernel, caller: Process) -> list[ToolSpec]:
    return [spec for spec in provider(kernel).specs()
            if kernel.dispatcher.permits(caller, tool_capability(spec.name))]


async def sys_list_tools(kernel: Kernel, caller: Process, req: ListTools) -> list[ToolSpec]:
    return allowed(kernel, caller)


async def sys_call_tool(kernel: Kernel, caller: Process, req: CallTool) -> Any:
    tools = provider(kernel)
    spec = tools.get(req.name)
    if spec is None:
        names = ", ".join(spec.name for spec in allowed(kernel, caller)) or "none"
        raise NoSuchTool(f"no tool named {req.name!r}; the tools process {caller.pid} may call: {names}")
    timeout = spec.timeout_s if req.timeout is None else min(req.timeout, spec.timeout_s)
    began = time.perf_counter()
    try:
        with anyio.move_on_after(timeout):
            context = ToolContext(pid=caller.pid, process=caller.name, idempotency_key=current_step_key(),
                                  network=kernel.dispatcher.permits(caller, NET))
            return await tools.call(spec.name, req.arguments, context)
        raise ToolTimeout(f"tool {spec.name!r} did not finish within {timeout:g} s and was stopped")
    finally:
        caller.stats.tool_calls += 1
        caller.stats.tool_time_s += time.perf_counter() - began


HANDLERS = {CallTool: sys_call_tool, ListTools: sys_list_tools}

__all__ = ["CallTool", "HANDLERS", "ListTools", "ToolContext", "ToolSpec"]
