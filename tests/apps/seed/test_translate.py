"""translate: a few-shot completion per line, on the fake driver (exact) and the real model."""

from __future__ import annotations

import re

import pytest

from llmos.apps.seed import translate
from llmos.syscalls import InvalidRequest, ProcState
from llmos.testing import FakeDriver, ScriptedConsole, result, run_app


async def test_each_line_is_translated_with_a_few_shot_prompt_and_written():
    driver, console = FakeDriver(), ScriptedConsole()
    driver.enqueue(" Hello, world!\nText: more", " Good night")
    out = result(await run_app("translate", "你好，世界！\n\n晚安", driver=driver, console=console,
                               target_lang="English"))
    assert out == "Hello, world!\n\nGood night"
    assert console.text == "Hello, world!\nGood night\n"
    assert driver.prompts[0].startswith("Translate each text into English.\n\nText: 谢谢你\nEnglish: Thank you")
    assert driver.prompts[0].endswith("Text: 你好，世界！\nEnglish:")
    assert [job.sampling.stop for job in driver.jobs] == [("\n",), ("\n",)]


async def test_an_unknown_language_fails_before_generating():
    driver = FakeDriver()
    status = await run_app("translate", "hi", driver=driver, target_lang="klingon")
    assert status.state is ProcState.FAILED and "unknown target language 'klingon'" in status.reason
    assert driver.jobs == []
    with pytest.raises(InvalidRequest):
        translate.language("xx")


@pytest.mark.model
async def test_the_seed_sentence_on_the_real_model(smollm2):
    out = result(await run_app("translate", "你好，世界！", driver=smollm2.driver, timeout=60))
    assert out.strip() and re.fullmatch(r"[\x00-\x7f]+", out), out  # non-empty, and English letters only
