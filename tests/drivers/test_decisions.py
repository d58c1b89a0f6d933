"""The decision policies on their own: what they ask the model, and how they read it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from llmos.drivers.decisions import NO_TOOL, NO_TOOL_EXAMPLES, GeneratedDecisions, LikelihoodDecisions, summary
from llmos.kernel.decisions import JsonTurn
from llmos.kernel.errors import InvalidRequest
from llmos.kernel.tools import ToolSpec

ADD = ToolSpec(name="add", description="Add two numbers. Integers only.",
               parameters={"type": "object", "properties": {"a": {"type": "integer", "description": "first"},
                                                            "b": {"type": "integer"}}, "required": ["a", "b"]})
CLOCK = ToolSpec(name="clock", description="")


class Model:
    """A `ModelAccess` that records what it was asked and answers as told."""

    def __init__(self, index: int = 0, answer: Any = None) -> None:
        self.index, self.answer, self.asked = index, answer, []

    async def json(self, turn: JsonTurn) -> Any:
        self.asked.append(turn)
        return self.answer

    async def choose(self, question: str, options: Sequence[str], descriptions: Sequence[str] | None = None,
                     system: str | None = None, examples: Sequence[Sequence[str]] | None = None) -> int:
        self.asked.append((question, tuple(options), tuple(descriptions or ())))
        self.examples = examples
        return self.index


def test_a_choice_lists_the_options_with_their_descriptions() -> None:
    system, user = LikelihoodDecisions().choice_messages("Which one?", ["a", "b"], ["first", ""], None)
    assert system.role == "system" and user.content.splitlines() == [
        "Which one?", "", "Options:", "- a: first", "- b", "", "Answer with the option's name only."]


async def test_the_likelihood_policy_chooses_among_the_names_and_none() -> None:
    model = Model(index=2)
    assert await LikelihoodDecisions().pick_tool([ADD, CLOCK], "What is 2 + 3?", model) is None
    question, options, descriptions = model.asked[0]
    assert options == ("add", "clock", NO_TOOL) and descriptions[0] == "Add two numbers"
    assert question == "What is 2 + 3?"
    assert await LikelihoodDecisions().pick_tool([ADD, CLOCK], "now?", Model(index=1)) is CLOCK


async def test_the_generated_policy_reads_its_json_enum() -> None:
    model = Model(answer={"tool": "add"})
    assert await GeneratedDecisions().pick_tool([ADD, CLOCK], "What is 2 + 3?", model) is ADD
    [turn] = model.asked
    assert turn.schema["properties"]["tool"]["enum"] == ["add", "clock", NO_TOOL]
    assert await GeneratedDecisions().pick_tool([ADD], "hi", Model(answer={"tool": NO_TOOL})) is None


def test_the_arguments_turn_uses_the_tool_s_schema_closed_to_other_keys() -> None:
    turn = LikelihoodDecisions().tool_arguments(ADD, "What is 2 + 3?")
    assert turn.schema == {**ADD.parameters, "additionalProperties": False}
    assert "- a: first" in turn.prompt and "- b: integer" in turn.prompt
    assert LikelihoodDecisions().tool_arguments(CLOCK, "now?").schema == {
        "type": "object", "properties": {}, "additionalProperties": False}
    open_ended = ToolSpec(name="kv", parameters={"type": "object", "additionalProperties": {"type": "string"}})
    assert LikelihoodDecisions().tool_arguments(open_ended, "x").schema == open_ended.parameters


def test_the_arguments_turn_says_which_arguments_may_be_left_out_and_their_defaults() -> None:
    listing = ToolSpec(name="ls", parameters={"type": "object", "properties": {
        "path": {"type": "string", "description": "the folder", "default": "."},
        "hidden": {"type": "boolean"}}})
    lines = LikelihoodDecisions().tool_arguments(listing, "Which files?").prompt.splitlines()
    assert '- path (optional, "." if left out): the folder' in lines and "- hidden (optional): boolean" in lines
    assert "Leave out an optional argument the question does not give." in lines
    assert "Leave out" not in LikelihoodDecisions().tool_arguments(ADD, "What is 2 + 3?").prompt  # all required


async def test_a_required_choice_leaves_none_out_and_one_tool_is_not_asked() -> None:
    model = Model(index=0)
    assert await LikelihoodDecisions().pick_tool([ADD, CLOCK], "hi", model, required=True) is ADD
    assert NO_TOOL not in model.asked[-1][1]
    assert await LikelihoodDecisions().pick_tool([CLOCK], "hi", Model(index=5), required=True) is CLOCK


@pytest.mark.parametrize("policy", [LikelihoodDecisions(), GeneratedDecisions()])
async def test_a_tool_named_like_the_no_tool_choice_cannot_be_offered(policy) -> None:  # noqa: ANN001
    with pytest.raises(InvalidRequest, match="cannot be offered"):
        await policy.pick_tool([ADD, ToolSpec(name=NO_TOOL)], "hi", Model())


def test_a_summary_is_the_first_sentence_on_one_line() -> None:
    assert summary(ToolSpec(name="x", description="Run code.\n  More text here.")) == "Run code"
    assert summary(ToolSpec(name="x", description="Sum, e.g. 1 + 2. Then more.")) == "Sum, e.g. 1 + 2"
    assert summary(CLOCK) == "no description"


async def test_tools_with_examples_are_chosen_with_them_and_none_with_its_own() -> None:
    weather = ToolSpec(name="weather", description="The forecast.", examples=("Will it rain tomorrow?",))
    model = Model(index=0)
    assert await LikelihoodDecisions().pick_tool([weather, CLOCK], "Rain?", model) is weather
    assert model.examples == [("Will it rain tomorrow?",), (), NO_TOOL_EXAMPLES]
    plain = Model(index=0)
    await LikelihoodDecisions().pick_tool([ADD, CLOCK], "2 + 3?", plain)
    assert plain.examples is None  # no tool has examples: meaning by the descriptions alone


@pytest.mark.parametrize("policy", [LikelihoodDecisions(), GeneratedDecisions()])
def test_a_json_reply_is_asked_for_by_its_keys_and_decoded_closed(policy):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "note": {"type": "string",
              "description": "anything else"}}, "required": ["city"]}
    shape, decoded = policy.json_reply(schema)
    assert shape.splitlines() == ["Reply with one JSON object only, with these keys:", "- city: string",
                                  "- note (optional): anything else"]
    assert decoded == {**schema, "additionalProperties": False}
    open_schema = {**schema, "additionalProperties": True}
    assert policy.json_reply(open_schema)[1] == open_schema  # what a schema says is kept
    shape, decoded = policy.json_reply({"type": "array", "items": {"type": "integer"}})
    assert shape == 'Reply with JSON only, following this JSON schema: {"type": "array", "items": {"type": "integer"}}'
    assert decoded == {"type": "array", "items": {"type": "integer"}}
