"""Model-driven tool calling: the model answers in text or calls one of the offered tools.

For models whose chat template has no tool format (SmolLM2's has none), llmos asks in two
constrained steps, each of which always parses: first which tool answers the message (or
none), as a choice among the names; then that tool's arguments, under its own JSON
schema. On SmolLM2-135M the choice as its own question picks the right tool far more
often than one combined call-or-answer turn (5/9 against 0-2/9 on our probe set).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from llmos.kernel import capabilities
from llmos.kernel.errors import InvalidRequest, NoSuchTool, PermissionDenied, ToolUnavailable
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import Process
from llmos.kernel.tools import ToolSpec
from llmos.syscalls.tools import may_call


NO_TOOL = "none"  # the choice that means "answer without a tool"


class ToolCall(BaseModel):
    """A call the model asked for; run it with `sys.call_tool(call.name, **call.arguments)`."""

    model_config = ConfigDict(frozen=True)

    name: str
    arguments: dict[str, Any]


def offered_tools(kernel: Kernel, caller: Process, names: Sequence[str]) -> list[ToolSpec]:
    """The specs of the tools named, each one the caller may call."""
    if kernel.tools is None:
        raise ToolUnavailable("this kernel has no tools to offer the model")
    specs = []
    for name in dict.fromkeys(names):
        if name == NO_TOOL:
            raise InvalidRequest(f"a tool named {NO_TOOL!r} cannot be offered: the model says {NO_TOOL!r} "
                                 "when it chooses no tool")
        spec = kernel.tools.get(name)
        if spec is None:
            raise NoSuchTool(f"no tool named {name!r} to offer the model")
        if not may_call(caller, name):
            raise PermissionDenied(f"offering tool {name!r} to the model needs capability "
                                   f"'{capabilities.TOOL}.{name}', which process {caller.pid} does not hold")
        specs.append(spec)
    return specs


def choice_schema(specs: Sequence[ToolSpec]) -> dict[str, Any]:
    names = [spec.name for spec in specs] + [NO_TOOL]
    return {"type": "object", "properties": {"tool": {"enum": names}}, "required": ["tool"],
            "additionalProperties": False}


def choice_prompt(specs: Sequence[ToolSpec], message: str) -> str:
    lines = ["Pick the tool that answers the question.", "Tools:"]
    lines += [f"- {spec.name}: {spec.description.strip() or 'no description'}" for spec in specs]
    lines += [f"- {NO_TOOL}: no tool is needed.", "", f"Question: {message}",
              'Reply with JSON like {"tool": "<tool name>"}.']
    return "\n".join(lines)


def arguments_prompt(spec: ToolSpec, message: str) -> str:
    props = spec.parameters.get("properties", {})
    described = [f"- {name}: {prop.get('description') or prop.get('type', 'value')}" for name, prop in props.items()]
    return "\n".join([f"Call the tool {spec.name}: {spec.description.strip()}", "Its arguments:", *described, "",
                      f"Question: {message}", "Reply with the arguments as JSON."])


def arguments_schema(spec: ToolSpec) -> dict[str, Any]:
    return spec.parameters or {"type": "object", "properties": {}}


def parse_json(text: str) -> Any:
    """A constrained reply; only max_tokens can leave it unfinished."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise InvalidRequest("the model's tool turn was cut short by max_tokens; raise max_tokens") from None
