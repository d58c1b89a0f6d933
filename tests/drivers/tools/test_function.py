"""@tool: schemas from signatures and docstrings, validation, sync and async functions."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from llmos.drivers.tools import tool
from llmos.drivers.tools.function import parse_docstring
from llmos.kernel.errors import InvalidToolArguments, ToolFailed
from llmos.kernel.tools import ToolContext

CTX = ToolContext(pid=1, process="test")


class Point(BaseModel):
    x: float
    y: float


@tool
def search(query: str, limit: int = 5, mode: Literal["fast", "exact"] = "fast",
           tags: list[str] | None = None) -> list[str]:
    """Search the notes.

    Longer explanation on a second paragraph.

    Args:
        query: words to look for
        limit: how many results at most,
            counting from the best
        mode: how hard to look
    """
    return [query] * limit


def test_the_schema_comes_from_the_signature_and_docstring():
    assert search.name == "search"
    assert search.description == "Search the notes.\n\nLonger explanation on a second paragraph."
    schema = search.parameters
    assert schema["required"] == ["query"] and schema["additionalProperties"] is False
    assert schema["properties"]["query"] == {"description": "words to look for", "type": "string"}
    assert schema["properties"]["limit"] == {"default": 5, "description": "how many results at most, counting from "
                                             "the best", "type": "integer"}
    assert schema["properties"]["mode"]["enum"] == ["fast", "exact"]
    assert "title" not in schema and "title" not in schema["properties"]["tags"]


def test_nested_models_and_annotated_fields_and_context_parameters():
    @tool(name="move", timeout=3)
    def move_point(p: Point, dx: Annotated[float, Field(description="shift", ge=0)], ctx: ToolContext) -> Point:
        """Move a point."""
        return Point(x=p.x + dx, y=p.y)

    schema = move_point.parameters
    assert move_point.name == "move" and move_point.timeout_s == 3 and move_point.context_param == "ctx"
    assert set(schema["properties"]) == {"p", "dx"}  # the context is not an argument
    assert schema["properties"]["p"] == {"$ref": "#/$defs/Point"} and "Point" in schema["$defs"]
    assert schema["properties"]["dx"]["minimum"] == 0 and schema["properties"]["dx"]["description"] == "shift"


async def test_arguments_are_validated_and_converted_before_the_call():
    assert await search.run({"query": "x", "limit": "2"}, CTX) == ["x", "x"]
    with pytest.raises(InvalidToolArguments, match="mode: Input should be 'fast' or 'exact'"):
        await search.run({"query": "x", "mode": "slow"}, CTX)
    with pytest.raises(InvalidToolArguments, match="query: Field required"):
        await search.run({}, CTX)


async def test_async_tools_and_results_made_json_able():
    @tool
    async def origin(ctx: ToolContext) -> Point:
        """The origin, and who asked."""
        return Point(x=0, y=ctx.pid)

    assert await origin.run({}, CTX) == {"x": 0.0, "y": 1.0}


async def test_what_a_tool_raises_is_a_tool_failed_and_a_bad_result_too():
    @tool
    def bad() -> object:
        """Returns something JSON cannot hold."""
        return object()

    @tool
    def raises() -> None:
        """Raises."""
        raise KeyError("k")

    with pytest.raises(ToolFailed, match="not JSON-able"):
        await bad.run({}, CTX)
    with pytest.raises(ToolFailed, match="KeyError"):
        await raises.run({}, CTX)


def test_a_tool_is_still_callable_as_the_function():
    assert search("q", limit=1) == ["q"]


def test_variadic_parameters_are_refused():
    with pytest.raises(TypeError, match="ordinary named parameter"):
        tool(lambda *args: None)


def test_docstring_parsing_without_an_args_section():
    assert parse_docstring("Just a line.") == ("Just a line.", {})
    assert parse_docstring("Do it.\n\nArgs:\n    a (int): first\n\nReturns:\n    the thing")[1] == {"a": "first"}
