"""What the kernel needs from tools: their descriptions, and one way to call them.

The kernel runs no tool itself. llmos.drivers.tools implements `ToolProvider` (Python
functions in-process or in a sandboxed subprocess, and the tools of MCP servers) and the
composition root plugs it in as `kernel.tools`. The dispatcher checks the caller's
capability ("tool.NAME", from `CallTool.needs`), the `call_tool` handler enforces the
timeout around `ToolProvider.call`, and the provider validates the arguments against the
tool's schema before the tool runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from llmos.kernel import params

JsonSchema = dict[str, Any]


class ToolSpec(BaseModel):
    """A tool as a caller (or a model) sees it: OpenAI's function shape, plus how it runs."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    parameters: JsonSchema = Field(default_factory=lambda: {"type": "object", "properties": {}})
    # Requests this tool answers, in a user's words: choosing a tool compares a request with
    # them by meaning (as semantic routers do), which a small model's likelihood cannot.
    examples: tuple[str, ...] = ()
    timeout_s: float = Field(default=params.TOOL_TIMEOUT_S, gt=0, le=params.MAX_TOOL_TIMEOUT_S)
    sandboxed: bool = False  # runs jailed in a child process (drivers/tools/jail.py)
    source: str = ""  # who provides it: "builtin", a plugin's name, "mcp:SERVER"
    # What it may do, for the audit log and the injection rule (kernel/security.py). The
    # defaults assume the worst of a tool that says nothing: it changes things, it can send
    # data out, and what it returns may have been written by anyone.
    read_only: bool = False  # changes nothing (a calculator, reading the workspace)
    sends_data: bool = True  # can send what it is given out of the kernel (network, mail, another system)
    trusted_output: bool = False  # its result is not text someone else could have written

    def openai(self) -> dict[str, Any]:
        """The OpenAI function-calling form: {"type": "function", "function": {...}}."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


class ToolContext(BaseModel):
    """Who is calling. A tool receives it if one of its parameters is annotated `ToolContext`
    (that parameter is not part of its schema)."""

    model_config = ConfigDict(frozen=True)

    pid: int
    process: str  # the caller's name
    workspace: str | None = None  # the caller's own folder (LLMOS_HOME/workspaces/NAME), set by the provider
    # For a durable process's call: a key that stays the same when the call runs again after
    # a crash (kernel/journal.py). A tool with side effects uses it to apply them once.
    idempotency_key: str | None = None
    network: bool = False  # the caller holds the `net` capability: a jailed tool may reach the network

    @property
    def workspace_path(self) -> Path:
        if self.workspace is None:
            raise RuntimeError("this tool context has no workspace folder")
        return Path(self.workspace)


class ToolProvider(Protocol):
    """The tools a kernel offers. `call` may block; it must end promptly when cancelled."""

    def specs(self) -> list[ToolSpec]:
        """Every tool, sorted by name."""

    def get(self, name: str) -> ToolSpec | None: ...

    async def call(self, name: str, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        """Validate `arguments` (InvalidToolArguments), run the tool and return its JSON-able
        result; a tool's failure is a ToolFailed, a sandbox limit a ToolLimitExceeded."""

