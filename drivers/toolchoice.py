"""The tool-choice policy for models whose chat template has no tool format (SmolLM2's has
none): two constrained turns, each of which always parses. First which tool answers the
message (or none), as a choice among the names; then that tool's arguments, under its own
JSON schema. On SmolLM2-135M the choice as its own question picks the right tool far more
often than one combined call-or-answer turn (5/9 against 0-2/9 on our probe set).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmos.kernel.errors import InvalidRequest
from llmos.kernel.tools import JsonTurn, ToolSpec

NO_TOOL = "none"  # the choice that means "answer without a tool"


class TwoStepChoice:
    """`llmos.kernel.tools.ToolChoicePolicy`: a choice among names, then the arguments."""

    def choice(self, specs: Sequence[ToolSpec], message: str) -> JsonTurn:
        if any(spec.name == NO_TOOL for spec in specs):
            raise InvalidRequest(f"a tool named {NO_TOOL!r} cannot be offered: the model says {NO_TOOL!r} "
                                 "when it chooses no tool")
        names = [spec.name for spec in specs] + [NO_TOOL]
        schema = {"type": "object", "properties": {"tool": {"enum": names}}, "required": ["tool"],
                  "additionalProperties": False}
        lines = ["Pick the tool that answers the question.", "Tools:"]
        lines += [f"- {spec.name}: {spec.description.strip() or 'no description'}" for spec in specs]
        lines += [f"- {NO_TOOL}: no tool is needed.", "", f"Question: {message}",
                  'Reply with JSON like {"tool": "<tool name>"}.']
        return JsonTurn(prompt="\n".join(lines), schema=schema)

    def chosen(self, specs: Sequence[ToolSpec], answer: Any) -> ToolSpec | None:
        return next((spec for spec in specs if spec.name == answer["tool"]), None)

    def arguments(self, spec: ToolSpec, message: str) -> JsonTurn:
        props = spec.parameters.get("properties", {})
        described = [f"- {name}: {prop.get('description') or prop.get('type', 'value')}"
                     for name, prop in props.items()]
        prompt = "\n".join([f"Call the tool {spec.name}: {spec.description.strip()}", "Its arguments:", *described,
                            "", f"Question: {message}", "Reply with the arguments as JSON."])
        return JsonTurn(prompt=prompt, schema=spec.parameters or {"type": "object", "properties": {}})
