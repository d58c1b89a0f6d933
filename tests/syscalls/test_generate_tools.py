"""sys.chat(tools=...) on the FakeDriver: the tool chosen by likelihood (a scored job, which
the FakeDriver decides by the tool its next answer names), its arguments in a constrained
turn, and their errors; and the `choose` syscall itself."""

from __future__ import annotations

import json

import pytest

import llmos
from llmos.syscalls import Errno, NoSuchTool, ToolCall
from llmos.testing import FakeDriver, caught, result, spawn_and_wait

CAPS = {"model.generate", "tool.calculator", "tool.current_time"}


async def test_the_model_chooses_a_tool_then_its_arguments() -> None:
    driver = FakeDriver()
    driver.enqueue("calculator", '{"expression": "2 + 2"}')

    async def main(sys):  # noqa: ANN001
        reply = await sys.chat("What is 2 + 2?", tools=["calculator", "current_time"])
        return reply.text, reply.tool_calls, reply.prompt_tokens, reply.completion_tokens

    async with llmos.boot(driver, embedder=None) as kernel:
        text, calls, prompt_tokens, tokens = result(await spawn_and_wait(kernel, main, caps=CAPS))
    assert text == "" and calls == (ToolCall(name="calculator", arguments={"expression": "2 + 2"}),)
    choice, arguments = driver.jobs[0], driver.jobs[1]
    assert choice.options == ("calculator", "current_time", "none") and choice.token_ids == []
    assert choice.messages[-1].content.startswith("What is 2 + 2?\n\nOptions:\n- calculator: ")
    assert arguments.sampling.json_schema["properties"]["expression"]["type"] == "string"
    assert tokens == 4 and prompt_tokens == len(choice.prompt_ids) + len(arguments.prompt_ids)  # both accounted


async def test_choosing_no_tool_answers_in_the_conversation() -> None:
    driver = FakeDriver()
    driver.enqueue("none", "Hello there.")

    async def main(sys):  # noqa: ANN001
        first = await sys.chat("Say hello.", tools=["calculator"])
        await sys.chat("And again?")
        return first.text, first.tool_calls

    async with llmos.boot(driver, embedder=None) as kernel:
        text, calls = result(await spawn_and_wait(kernel, main, caps=CAPS))
    assert (text, calls) == ("Hello there.", ())
    assert "<user>Say hello.\n<assistant>Hello there." in driver.prompts[-1]  # the answer joined the conversation


async def test_a_tool_call_is_remembered_as_the_call() -> None:
    driver = FakeDriver()
    driver.enqueue("calculator", '{"expression": "1"}')

    async def main(sys):  # noqa: ANN001
        await sys.chat("One?", tools=["calculator"])
        await sys.chat("Next.")

    async with llmos.boot(driver, embedder=None) as kernel:
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

    async with llmos.boot(FakeDriver(), embedder=None) as kernel:
        codes = result(await spawn_and_wait(kernel, main, caps=CAPS | {"tool.nope", "tool.none"}))
    # Offering a tool needs its capability (EPERM), checked before whether it exists.
    assert codes == [NoSuchTool.code, Errno.EPERM, Errno.EINVAL, Errno.EINVAL, NoSuchTool.code]


async def test_choose_scores_every_option_and_says_how_sure() -> None:
    driver = FakeDriver()
    driver.enqueue("poet")

    async def main(sys):  # noqa: ANN001
        return await sys.choose("Who writes this haiku?", ["math", "poet", "translator"],
                                descriptions=["does sums", "writes verse", "translates"])

    async with llmos.boot(driver, memory=None, embedder=None) as kernel:
        info = await kernel.spawn(main, caps={"model.generate"})
        choice = result(await kernel.wait(info.pid, timeout=5))
        trace = [e.call for e in kernel.trace if e.pid == info.pid]
    assert (choice.option, choice.index) == ("poet", 1) and choice.model == "fake"
    assert choice.probabilities[1] > 0.9 and sum(choice.probabilities) == pytest.approx(1.0)
    assert choice.tokens == (4, 4, 10)  # the FakeDriver's tokens are characters
    assert choice.logprobs[1] == pytest.approx(-0.4) and choice.logprobs[0] == pytest.approx(-12.0)
    [job] = driver.jobs
    assert "- poet: writes verse" in job.messages[-1].content and trace == ["choose"]


async def test_choose_errors() -> None:
    async def main(sys):  # noqa: ANN001
        return [(await caught(sys.choose("q", ["only"]))).code,
                (await caught(sys.choose("q", ["a", "a"]))).code,
                (await caught(sys.choose("q", ["a", " "]))).code,
                (await caught(sys.choose("q", ["a", "b"], descriptions=["one"]))).code]

    async def valid(sys):  # noqa: ANN001
        return (await caught(sys.choose("q", ["a", "b"]))).code

    async with llmos.boot(FakeDriver(), memory=None, embedder=None) as kernel:
        codes = result(await spawn_and_wait(kernel, main))
        denied = result(await spawn_and_wait(kernel, valid, caps={"ipc"}))
    async with llmos.boot(None, memory=None, embedder=None) as kernel:
        missing = result(await spawn_and_wait(kernel, valid))
    assert codes == [Errno.EINVAL] * 4 and denied is Errno.EPERM and missing is Errno.EIO


async def test_a_kernel_without_a_model_chooses_by_meaning_alone() -> None:
    async def main(sys):  # noqa: ANN001
        return await sys.choose("Say 'good morning' in French.", ["math", "translator", "poet"],
                                descriptions=["solves sums", "translates between languages", "writes poems"])

    async with llmos.boot(None, memory=None) as kernel:  # the packaged MiniLM, no language model
        choice = result(await spawn_and_wait(kernel, main, timeout=60))
    assert choice.option == "translator" and choice.logprobs is None and choice.model is None
    assert choice.similarities is not None and max(choice.similarities) == choice.similarities[1]


async def test_examples_add_each_option_s_best_match_to_its_meaning() -> None:
    """An option's meaning is its description's similarity plus its best example's; one with
    no examples counts its description twice (the packaged MiniLM, no language model)."""
    examples = (("What is 12 times 7?", "Divide 1000 by 8."), ())

    async def main(sys):  # noqa: ANN001
        plain = await sys.choose("How much is 6 times 9?", ["numbers", "words"], descriptions=["x", "y"])
        shown = await sys.choose("How much is 6 times 9?", ["numbers", "words"], descriptions=["x", "y"],
                                 examples=examples)
        bad = await caught(sys.choose("q", ["a", "b"], examples=[["one"]]))
        return plain, shown, bad.code

    async with llmos.boot(None, memory=None) as kernel:
        plain, shown, bad = result(await spawn_and_wait(kernel, main, timeout=60))
    from llmos.drivers.embeddings import MINILM

    best = max(float(v) for v in MINILM.embed(list(examples[0])) @ MINILM.embed(["How much is 6 times 9?"])[0])
    assert shown.similarities[0] == pytest.approx(plain.similarities[0] + best, abs=1e-5)
    assert shown.similarities[1] == pytest.approx(2 * plain.similarities[1], abs=1e-5)
    assert shown.option == "numbers" and bad is Errno.EINVAL
