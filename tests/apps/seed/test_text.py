"""generate and chat as apps: streamed to the user, one conversation across messages."""

from __future__ import annotations

import pytest

from llmos.testing import FakeDriver, ScriptedConsole, result, run_app


async def test_generate_streams_the_continuation():
    driver, console = FakeDriver(), ScriptedConsole()
    driver.enqueue(" full of wonders.")
    assert result(await run_app("generate", "The world is", driver=driver, console=console)) == "full of wonders."
    assert console.text == "full of wonders.\n"
    assert len(console.written) > 2  # piece by piece, as generated


async def test_chat_keeps_one_conversation_across_messages():
    driver = FakeDriver()
    driver.enqueue("Hi!", "You said hello.")
    assert result(await run_app("chat", "hello", "what did I say?", driver=driver)) == "You said hello."
    assert driver.prompts[1] == "<user>hello\n<assistant>Hi!\n<user>what did I say?\n<assistant>"


async def test_chat_without_messages_converses_until_exit():
    driver, console = FakeDriver(), ScriptedConsole("hello", "", "bye", "/exit", "never read")
    assert result(await run_app("chat", driver=driver, console=console)) is None
    assert console.text == "echo: hello\necho: bye\n"
    assert list(console.answers) == ["never read"]


async def test_chat_ends_at_end_of_input():
    console = ScriptedConsole("hello")
    assert result(await run_app("chat", console=console)) is None
    assert len(console.questions) == 2


@pytest.mark.model
async def test_chat_on_the_real_model(smollm2):
    console = ScriptedConsole()
    # Asked so that the model's first token wins clearly: for the bare question its top two in
    # bfloat16 are 0.25 apart (two rounding steps), and K/V reused from the prefix cache,
    # computed in another chunk, round differently (tests/drivers/test_transformers_driver.py).
    out = result(await run_app("chat", "What is the capital of France? Answer in one sentence.",
                               driver=smollm2.driver, console=console, max_tokens=16, timeout=60))
    assert "Paris" in out and "Paris" in console.text
