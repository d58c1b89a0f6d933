"""What the kernel needs from tools: their descriptions, and one way to call them.

The kernel runs no tool itself. llmos.drivers.tools implements `ToolProvider` (Python
functions in-process or in a sandboxed subprocess, and the tools of MCP servers) and the
composition root plugs it in as `kernel.tools`. The `call_tool` syscall checks the
caller's capability and enforces the timeout around `ToolProvider.call`; the provider
validates the arguments against the tool's schema before the tool runs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
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
    timeout_s: float = Field(default=params.TOOL_TIMEOUT_S, gt=0, le=params.MAX_TOOL_TIMEOUT_S)
    sandboxed: bool = False  # runs in a child process with rlimits
    source: str = ""  # who provides it: "builtin", a plugin's name, "mcp:SERVER"

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


def tool_call_schema(tools: Iterable[ToolSpec], *, answer: bool = True) -> JsonSchema:
    """A JSON schema for one model turn that either calls one of `tools` or answers in text:

        {"tool": "<name>", "arguments": {...that tool's arguments...}}   or   {"answer": "..."}

    One `anyOf` branch per tool (its name a `const`, so each branch carries exactly that
    tool's argument schema), then the answer branch unless `answer=False`. The tools'
    `$defs` are hoisted to the top, renamed `TOOL__NAME`, so every `$ref` still resolves.
    """
    branches: list[JsonSchema] = []
    defs: JsonSchema = {}
    for spec in tools:
        arguments = copy.deepcopy(spec.parameters)
        local = arguments.pop("$defs", {})
        renames = {f"#/$defs/{key}": f"#/$defs/{spec.name}__{key}" for key in local}
        defs.update({f"{spec.name}__{key}": _rename_refs(value, renames) for key, value in local.items()})
        branches.append(_object({"tool": {"const": spec.name}, "arguments": _rename_refs(arguments, renames)}))
    if answer:
        branches.append(_object({"answer": {"type": "string"}}))
    if not branches:
        raise ValueError("tool_call_schema needs at least one tool, or answer=True")
    schema: JsonSchema = {"anyOf": branches}
    if defs:
        schema["$defs"] = defs
    return schema


def _object(properties: JsonSchema) -> JsonSchema:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _rename_refs(node: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: renames.get(value, value) if key == "$ref" and isinstance(value, str)
                else _rename_refs(value, renames) for key, value in node.items()}
    if isinstance(node, list):
        return [_rename_refs(item, renames) for item in node]
    return node
