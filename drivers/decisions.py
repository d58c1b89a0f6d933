"""How llmos asks a small model to decide (`llmos.kernel.decisions.DecisionPolicy`).

`LikelihoodDecisions` (the default) picks a tool by the model's likelihood of each tool's
name, "none" included, as the reply to the request (the `choose` syscall), and fills the
arguments in one grammar-constrained turn. `GeneratedDecisions` is the earlier way, kept
for comparison (bench/choose.py): the model generates the choice as a JSON enum. On
SmolLM2-135M the generated choice is decided by the first token's bias and never says
"none"; see the README for the measured figures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from llmos.kernel.decisions import JsonTurn, ModelAccess
from llmos.kernel.errors import InvalidRequest
from llmos.kernel.model import ChatMessage
from llmos.kernel.tools import JsonSchema, ToolSpec

NO_TOOL = "none"  # the choice that means "answer without a tool"
# What "none" stands for, in words close to the requests it fits (measured on bench/evals:
# "no tool is needed" alone drew 19% of them to it, this 71%).
NO_TOOL_MEANS = "answer directly in words: greetings, facts, explanations, advice, stories or poems"
# Requests "none" fits, as a tool's `examples` are requests it fits (written apart from the
# eval sets of bench/evals; measured there: with examples on every option, tool choice went
# from 74% to 91% and "none" from 68% to 88%, bench/choose.py; the second group after the
# first held-out set's misses were seen, so tool_choice_heldout2.jsonl is their fair test).
NO_TOOL_EXAMPLES = (
    'Hello!',
    'Thank you!',
    'Who wrote Hamlet?',
    'Why is the sky blue?',
    'Tell me a joke.',
    'Write a short poem about the sea.',
    'Give me some advice on sleeping better.',
    'What is the capital of Italy?',
    'Explain how vaccines work.',
    'What do you think about jazz?',
    # Questions about the tools' own topics that no tool answers (knowledge, not an action):
    # MiniLM's similarity follows topic, and without these "Explain Python's ..." went to
    # run_python and "Why do time zones ...?" to current_time (bench/evals/README.md).
    'What is a Python decorator?',
    'Explain how recursion works in programming.',
    'What is the difference between a text file and a binary file?',
    'How should I organise the folders of a project?',
    'Why does a leap year have 366 days?',
    'What is a prime number?',
    'How can I get better at mental arithmetic?',
    'What does a file extension tell you?',
)
CHOOSER = "You pick the option that fits best."
TOOL_CHOOSER = "Which tool should handle the user's request? Pick one of the options."
_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.\s")


def summary(spec: ToolSpec) -> str:
    """A tool's description as one line: its first sentence."""
    text = " ".join(spec.description.split())
    return _SENTENCE_END.split(text)[0].rstrip(".") or "no description"


class _Prompts:
    def choice_messages(self, question: str, options: Sequence[str], descriptions: Sequence[str] | None,
                        system: str | None) -> tuple[ChatMessage, ...]:
        described = zip(options, descriptions, strict=True) if descriptions else ((o, "") for o in options)
        listed = [f"- {o}: {d}" if d else f"- {o}" for o, d in described]
        prompt = "\n".join([question, "", "Options:", *listed, "", "Answer with the option's name only."])
        return (ChatMessage(role="system", content=system or CHOOSER), ChatMessage(role="user", content=prompt))

    def tool_arguments(self, spec: ToolSpec, message: str) -> JsonTurn:
        props, required = spec.parameters.get("properties", {}), set(spec.parameters.get("required", ()))
        described = [_argument(name, prop, name in required) for name, prop in props.items()]
        optional = ["Leave out an optional argument the question does not give."] if set(props) - required else []
        prompt = "\n".join([f"Call the tool {spec.name}: {spec.description.strip()}", "Its arguments:", *described,
                            "", f"Question: {message}", *optional, "Reply with the arguments as JSON."])
        return JsonTurn(prompt=prompt, schema=closed(spec.parameters or {"type": "object", "properties": {}}))


    def json_reply(self, schema: JsonSchema) -> tuple[str, JsonSchema]:
        """Its keys listed as a tool's arguments are (a small model not told them invents
        keys, or runs a number on for want of the comma it wanted), and the schema closed."""
        props = schema.get("properties") if schema.get("type") == "object" else None
        if not props:
            return f"Reply with JSON only, following this JSON schema: {json.dumps(schema)}", schema
        required = set(schema.get("required", ()))
        described = [_argument(name, prop, name in required) for name, prop in props.items()]
        return "\n".join(["Reply with one JSON object only, with these keys:", *described]), closed(schema)


def _argument(name: str, prop: dict[str, Any], required: bool) -> str:
    """One argument's line. An optional one says so, and what it is when left out: asked for every
    key, a small model makes up a value the question never gave (a path, for instance)."""
    what = prop.get("description") or prop.get("type", "value")
    if required:
        return f"- {name}: {what}"
    default = f", {json.dumps(prop['default'])} if left out" if "default" in prop else ""
    return f"- {name} (optional{default}): {what}"


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The arguments' schema without room for keys it does not name (as OpenAI's strict
    mode reads it), unless it says otherwise: a small model given room invents keys and
    rambles on until max_tokens cuts the JSON short."""
    if schema.get("type") == "object" and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


def _offerable(specs: Sequence[ToolSpec]) -> None:
    if any(spec.name == NO_TOOL for spec in specs):
        raise InvalidRequest(f"a tool named {NO_TOOL!r} cannot be offered: {NO_TOOL!r} is the choice of no tool")


class LikelihoodDecisions(_Prompts):
    """The tool whose name the model finds the likeliest reply, "none" among them."""

    async def pick_tool(self, specs: Sequence[ToolSpec], message: str, model: ModelAccess, *,
                        required: bool = False) -> ToolSpec | None:
        _offerable(specs)
        if required and len(specs) == 1:
            return specs[0]
        none = [] if required else [NO_TOOL]
        options = [spec.name for spec in specs] + none
        descriptions = [summary(spec) for spec in specs] + ([NO_TOOL_MEANS] if none else [])
        # The request itself is the question (its meaning is compared with each tool's, and
        # with the requests each tool says it answers); what is asked of it goes in the system prompt.
        examples = [spec.examples for spec in specs] + ([NO_TOOL_EXAMPLES] if none else [])
        index = await model.choose(message, options, descriptions, system=TOOL_CHOOSER,
                                   examples=examples if any(spec.examples for spec in specs) else None)
        return specs[index] if index < len(specs) else None


class GeneratedDecisions(_Prompts):
    """The choice generated as JSON, {"tool": <enum of the names and "none">}."""

    def choice_turn(self, specs: Sequence[ToolSpec], message: str, required: bool = False) -> JsonTurn:
        names = [spec.name for spec in specs] + ([] if required else [NO_TOOL])
        schema = {"type": "object", "properties": {"tool": {"enum": names}}, "required": ["tool"],
                  "additionalProperties": False}
        lines = ["Pick the tool that answers the question.", "Tools:"]
        lines += [f"- {spec.name}: {spec.description.strip() or 'no description'}" for spec in specs]
        lines += [] if required else [f"- {NO_TOOL}: no tool is needed."]
        lines += ["", f"Question: {message}",
                  'Reply with JSON like {"tool": "<tool name>"}.']
        return JsonTurn(prompt="\n".join(lines), schema=schema)

    async def pick_tool(self, specs: Sequence[ToolSpec], message: str, model: ModelAccess, *,
                        required: bool = False) -> ToolSpec | None:
        _offerable(specs)
        answer: Any = await model.json(self.choice_turn(specs, message, required))
        return next((spec for spec in specs if spec.name == answer["tool"]), None)
