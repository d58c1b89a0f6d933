"""The two-step tool-choice policy on its own: what it asks, and how it reads the answers."""

from __future__ import annotations

import pytest

from llmos.drivers.toolchoice import NO_TOOL, TwoStepChoice
from llmos.kernel.errors import InvalidRequest
from llmos.kernel.tools import ToolSpec

ADD = ToolSpec(name="add", description="Add two numbers.",
               parameters={"type": "object", "properties": {"a": {"type": "integer", "description": "first"},
                                                            "b": {"type": "integer"}}, "required": ["a", "b"]})
CLOCK = ToolSpec(name="clock", description="")


def test_the_choice_is_an_enum_of_the_names_and_none() -> None:
    turn = TwoStepChoice().choice([ADD, CLOCK], "What is 2 + 3?")
    assert turn.schema["properties"]["tool"]["enum"] == ["add", "clock", NO_TOOL]
    assert "- add: Add two numbers." in turn.prompt and "- clock: no description" in turn.prompt
    assert turn.prompt.splitlines()[-2] == "Question: What is 2 + 3?"


def test_the_answer_names_a_spec_or_none() -> None:
    policy = TwoStepChoice()
    assert policy.chosen([ADD, CLOCK], {"tool": "clock"}) is CLOCK
    assert policy.chosen([ADD, CLOCK], {"tool": NO_TOOL}) is None


def test_the_arguments_turn_uses_the_tool_s_schema() -> None:
    turn = TwoStepChoice().arguments(ADD, "What is 2 + 3?")
    assert turn.schema is ADD.parameters
    assert "- a: first" in turn.prompt and "- b: integer" in turn.prompt
    assert TwoStepChoice().arguments(CLOCK, "now?").schema == {"type": "object", "properties": {}}


def test_a_tool_named_like_the_no_tool_choice_cannot_be_offered() -> None:
    with pytest.raises(InvalidRequest, match="cannot be offered"):
        TwoStepChoice().choice([ADD, ToolSpec(name=NO_TOOL)], "hi")
