"""tool_call_schema: the JSON schema of one model turn, a tool call or a text answer."""

from __future__ import annotations

import jsonschema
import pytest

from llmos.kernel.tools import ToolSpec, tool_call_schema

ADD = ToolSpec(name="add", parameters={"type": "object", "properties": {"a": {"type": "integer"}},
                                       "required": ["a"], "additionalProperties": False})
MOVE = ToolSpec(name="move", parameters={
    "type": "object", "properties": {"p": {"$ref": "#/$defs/Point"}}, "required": ["p"],
    "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}}})
OTHER_POINT = ToolSpec(name="other", parameters={
    "type": "object", "properties": {"q": {"$ref": "#/$defs/Point"}}, "required": ["q"],
    "$defs": {"Point": {"type": "string"}}})


def valid(schema, value) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def test_one_branch_per_tool_and_one_for_a_text_answer():
    schema = tool_call_schema([ADD, MOVE])
    assert [b["properties"].get("tool", {}).get("const") for b in schema["anyOf"]] == ["add", "move", None]
    assert schema["anyOf"][-1]["properties"] == {"answer": {"type": "string"}}
    assert valid(schema, {"tool": "add", "arguments": {"a": 1}})
    assert valid(schema, {"answer": "Paris."})
    assert not valid(schema, {"tool": "add", "arguments": {"a": "one"}})
    assert not valid(schema, {"tool": "add", "arguments": {"p": {"x": 1}}})  # move's arguments for add
    assert not valid(schema, {"tool": "sub", "arguments": {}})
    assert not valid(schema, {"tool": "add", "arguments": {"a": 1}, "answer": "both"})


def test_defs_are_hoisted_and_renamed_so_refs_resolve_without_collisions():
    schema = tool_call_schema([MOVE, OTHER_POINT], answer=False)
    assert set(schema["$defs"]) == {"move__Point", "other__Point"}
    assert valid(schema, {"tool": "move", "arguments": {"p": {"x": 1.5}}})
    assert valid(schema, {"tool": "other", "arguments": {"q": "a string"}})
    assert not valid(schema, {"tool": "other", "arguments": {"q": {"x": 1}}})
    assert not valid(schema, {"answer": "no text allowed"})
    assert "$defs" in MOVE.parameters  # the specs themselves are untouched


def test_nothing_to_choose_is_an_error():
    with pytest.raises(ValueError):
        tool_call_schema([], answer=False)
    assert tool_call_schema([]) == {"anyOf": [{"type": "object", "properties": {"answer": {"type": "string"}},
                                               "required": ["answer"], "additionalProperties": False}]}
