"""Tool syscalls: list the tools the caller may use, and call one.

A process may call tool NAME only if it holds "tool.NAME" (or a wildcard above it:
"tool.*", "tool.SERVER.*"). Every call has a timeout: the tool's own, or a shorter one
the caller asks for. The tool's time is accounted to the caller (`stats.tool_time_s`).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import anyio
from pydantic import Field

from llmos.kernel import capabilities, params
from llmos.kernel.abi import Request
from llmos.kernel.errors import NoSuchTool, PermissionDenied, ToolTimeout, ToolUnavailable
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import Process
from llmos.kernel.tools import ToolContext, ToolProvider, ToolSpec


class CallTool(Request):
    call: ClassVar[str] = "call_tool"
    blocking: ClassVar[bool] = True

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, le=params.MAX_TOOL_TIMEOUT_S)  # at most the tool's own


class ListTools(Request):
    call: ClassVar[str] = "list_tools"


def may_call(caller: Process, name: str) -> bool:
    return capabilities.grants(caller.capabilities, f"{capabilities.TOOL}.{name}")


def _provider(kernel: Kernel) -> ToolProvider:
    if kernel.tools is None:
        raise ToolUnavailable("this kernel has no tools; boot it with llmos.boot() to get the built-in ones")
    return kernel.tools


def _allowed(kernel: Kernel, caller: Process) -> list[ToolSpec]:
    return [spec for spec in _provider(kernel).specs() if may_call(caller, spec.name)]


async def sys_list_tools(kernel: Kernel, caller: Process, req: ListTools) -> list[ToolSpec]:
    return _allowed(kernel, caller)


async def sys_call_tool(kernel: Kernel, caller: Process, req: CallTool) -> Any:
    provider = _provider(kernel)
    spec = provider.get(req.name)
    if spec is None:
        names = ", ".join(spec.name for spec in _allowed(kernel, caller)) or "none"
        raise NoSuchTool(f"no tool named {req.name!r}; the tools process {caller.pid} may call: {names}")
    if not may_call(caller, spec.name):
        raise PermissionDenied(f"calling tool {spec.name!r} needs capability '{capabilities.TOOL}.{spec.name}', "
                               f"which process {caller.pid} ({caller.name}) does not hold")
    timeout = spec.timeout_s if req.timeout is None else min(req.timeout, spec.timeout_s)
    began = time.perf_counter()
    try:
        with anyio.move_on_after(timeout):
            return await provider.call(spec.name, req.arguments, ToolContext(pid=caller.pid, process=caller.name))
        raise ToolTimeout(f"tool {spec.name!r} did not finish within {timeout:g} s and was stopped")
    finally:
        caller.stats.tool_calls += 1
        caller.stats.tool_time_s += time.perf_counter() - began


HANDLERS = {CallTool: sys_call_tool, ListTools: sys_list_tools}

__all__ = ["CallTool", "HANDLERS", "ListTools", "ToolContext", "ToolSpec"]
