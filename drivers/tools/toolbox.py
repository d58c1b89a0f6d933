"""The tools a kernel offers (`ToolBox`, a `ToolProvider`), and the registry plugins fill.

Plugins register Python tools once per interpreter (`register_tool`); `llmos.boot` makes
each kernel a ToolBox of those, plus any given to it, plus the tools of its MCP servers.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.drivers.tools import jail
from llmos.drivers.tools.function import Tool, as_tool
from llmos.drivers.tools.jail import JailPlan
from llmos.drivers.tools.sandbox import WarmWorkers
from llmos.kernel.errors import NoSuchTool, ToolUnavailable
from llmos.kernel.tools import ToolContext, ToolSpec

RemoteCall = Callable[[Mapping[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Registered:
    """A Python tool as registered: who provides it and whether it runs in the sandbox."""

    tool: Tool
    source: str
    sandboxed: bool


REGISTERED: dict[str, Registered] = {}  # tool name -> the registration; filled by plugins' register_tools


def registration(obj: Tool | Callable[..., Any], source: str = "", trusted: bool | None = None,
                 default_trusted: bool = True) -> Registered:
    """How `obj` will run: its own `trusted` if it says, else `trusted`, else the default."""
    tool = as_tool(obj)
    trust = next(t for t in (tool.trusted, trusted, default_trusted) if t is not None)
    return Registered(tool, source, sandboxed=not trust)


def register_tool(obj: Tool | Callable[..., Any], *, source: str = "", trusted: bool | None = None,
                  default_trusted: bool = True) -> Tool:
    """Offer a tool to every kernel booted from now on. A name registered twice is an error."""
    entry = registration(obj, source, trusted, default_trusted)
    previous = REGISTERED.get(entry.tool.name)
    if previous is not None and previous.tool.fn is not entry.tool.fn:
        raise ValueError(f"tool {entry.tool.name!r} is registered twice: by {previous.source or '?'} and by "
                         f"{source or '?'}")
    REGISTERED[entry.tool.name] = entry
    return entry.tool


def workspace_folder(root: Path, process: str) -> Path:
    """A process's own folder: ROOT/NAME, the name made safe as one path component."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", process).strip(".") or "_"
    return root / safe


class ToolBox:
    """Python tools (in-process or sandboxed) and remote ones (MCP), under one namespace."""

    def __init__(self, tools: Iterable[Registered] = (), *, workspaces: Path | None = None) -> None:
        self.workspaces = workspaces  # the root of the processes' workspace folders
        self.workers = WarmWorkers()  # jailed workers started ahead (sandbox.py)
        self._specs: dict[str, ToolSpec] = {}
        self._local: dict[str, Registered] = {}
        self._remote: dict[str, RemoteCall] = {}
        for entry in tools:
            self.add(entry)

    def add(self, entry: Registered) -> None:
        self._claim(entry.tool.spec(entry.source, entry.sandboxed))
        self._local[entry.tool.name] = entry

    def add_remote(self, spec: ToolSpec, call: RemoteCall) -> None:
        self._claim(spec)
        self._remote[spec.name] = call

    def _claim(self, spec: ToolSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"two tools are named {spec.name!r}: from {self._specs[spec.name].source or '?'} and "
                             f"from {spec.source or '?'}")
        self._specs[spec.name] = spec

    def specs(self) -> list[ToolSpec]:
        return [self._as_run(self._specs[name]) for name in sorted(self._specs)]

    def get(self, name: str) -> ToolSpec | None:
        spec = self._specs.get(name)
        return None if spec is None else self._as_run(spec)

    @staticmethod
    def _as_run(spec: ToolSpec) -> ToolSpec:
        """A sandboxed tool that cannot be jailed here runs (if the user opted in) with the
        host's network: the kernel must count it as sending data out (kernel/security.py)."""
        if spec.sandboxed and not spec.sends_data and jail.problem() is not None:
            return spec.model_copy(update={"sends_data": True})
        return spec

    async def call(self, name: str, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        if name in self._remote:
            return await self._remote[name](arguments)
        entry = self._local.get(name)
        if entry is None:
            raise NoSuchTool(f"no tool named {name!r}")
        if (entry.tool.context_param or entry.sandboxed) and self.workspaces is not None:
            folder = workspace_folder(self.workspaces, context.process)
            folder.mkdir(parents=True, exist_ok=True)
            context = context.model_copy(update={"workspace": str(folder)})
        if not entry.sandboxed:
            return await entry.tool.run(arguments, context)
        plan = self._jail(entry.tool, context) if jail.check_or_refuse(name) else None
        return await entry.tool.run(arguments, context, sandboxed=True, jail=plan, workers=self.workers)

    def _jail(self, tool: Tool, context: ToolContext) -> JailPlan:
        """The caller's workspace writable, the network if it may, the tool's own code (its
        file or package), and nothing of LLMOS_HOME but that workspace."""
        if context.workspace is None:
            raise ToolUnavailable(f"tool {tool.name!r} must run in a jail, and this kernel gives tools no "
                                  "workspace folder to jail it in")
        target = tool.target()
        return JailPlan(workspace=context.workspace, network=context.network, files=jail.tool_code(target.module, target.file),
                        hidden=(str(self.workspaces.parent),) if self.workspaces is not None else ())

    async def aclose(self) -> None:
        """End the warm jailed workers."""
        await self.workers.aclose()
