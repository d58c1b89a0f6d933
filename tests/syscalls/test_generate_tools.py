"""sys.chat(tools=...) on the FakeDriver: the two constrained turns of the kernel's tool-choice policy, and their errors."""

from __future__ import annotations

import json

import llmos
from llmos.syscalls import Errno, NoSuchTool, ToolCall
from llmos.testing import FakeDriver, caught, result, spawn_and_wait

CAPS = {"model.generate", "tool.calculator", "tool.current_time"}


async def test_the_model_chooses_a_tool_then_its_arguments() -> None:
    driver = FakeDriver()
    driver.enqueue('{"tool": "calculator"}', '{"expression": "2 + 2"}')

    async def main(sys):  # noqa: ANN001
        reply = await sys.chat("What is 2 + 2?", tools=["calculator", "current_time"])
        return reply.text, reply.tool_calls, reply.completion_tokens

    async with llmos.boot(driver) as kernel:
        text, calls, tokens = result(await spawn_and_wait(kernel, main, caps=CAPS))
    assert text == "" and calls == (ToolCall(name="calculator", arguments={"expression": "2 + 2"}),)
    assert tokens == 6  # both steps are accounted
    choice, arguments = driver.jobs[0], driver.jobs[1]
    assert choice.sampling.json_schema["properties"]["tool"]["enum"] == ["calculator", "current_time", "none"]
    assert "Question: What is 2 + 2?" in choice.messages[-1].content
    assert arguments.sampling.json_schema["properties"]["expression"]["type"] == "string"


async def test_choosing_no_tool_answers_in_the_conversation() -> None:
    driver = FakeDriver()
    driver.enqueue('{"tool": "none"}', "Hello there.")

    async def main(sys):  # noqa: ANN001
        first = await sys.chat("Say hello.", tools=["calculator"])
        await sys.chat("And again?")
        return first.text, first.tool_calls

    async with llmos.boot(driver) as kernel:
        text, calls = result(await spawn_and_wait(kernel, main, caps=CAPS))
    assert (text, calls) == ("Hello there.", ())
    assert "<user>Say hello.\n<assistant>Hello there." in driver.prompts[-1]  # the answer joined the conversation


async def test_a_tool_call_is_remembered_as_the_call() -> None:
    driver = FakeDriver()
    driver.enqueue('{"tool": "calculator"}', '{"expression": "1"}')

    async def main(sys):  # noqa: ANN001
        await sys.chat("One?", tools=["calculator"])
        await sys.chat("Next.")

    async with llmos.boot(driver) as kernel:
        result(await spawn_and_wait(kernel, main, caps=CAPS))
    expected = json.dumps({"tool": "calculator", "arguments": {"expression": "1"}})
    assert f"<user>One?\n<assistant>{expected}" in driver.prompts[-1]


async def test_tool_errors() -> None:
    async def main(sys):  # noqa: ANN001
        return [(await caught(sys.chat("x", tools=["nope"]))).code,
                (await caught(sys.chat("x", tools=["read_file"]))).code,
                (await caught(sys.chat("x", tools=["calculator"], stream=True))).code,
                (await caught(sys.chat("x", tools=[]))).code,
                (await caught(sys.chat("x", tools=["none"]))).code]

    async with llmos.boot(FakeDriver()) as kernel:
        codes = result(await spawn_and_wait(kernel, main, caps=CAPS | {"tool.nope", "tool.none"}))
    # Offering a tool needs its capability (EPERM), checked before whether it exists.
    assert codes == [NoSuchTool.code, Errno.EPERM, Errno.EINVAL, Errno.EINVAL, NoSuchTool.code]
