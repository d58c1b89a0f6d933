"""summarize: chunking, and the map-reduce over child processes."""

from __future__ import annotations

import pytest

from llmos.apps.seed.summarize import chunks
from llmos.syscalls import ContextOverflow, ProcState
from llmos.testing import FakeDriver, ScriptedConsole, result, run_app

EIFFEL = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
          "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.")


def test_chunks_cut_at_paragraphs_then_sentences_then_words():
    text = "One. Two.\n\n" + "Three is longer. Four." + "\n\n" + "x" * 25
    assert chunks(text, 12) == ["One. Two.", "Three is", "longer.", "Four.", "x" * 12, "x" * 12, "x"]
    assert chunks("a\n\nb", 100) == ["a\nb"]
    assert all(len(c) <= 40 for c in chunks(EIFFEL * 5, 40))


def script(prompt: str) -> str:
    return f"S{prompt.count('.')}."  # a "summary" saying how many sentences it read


async def test_short_text_is_one_call():
    driver, console = FakeDriver(script), ScriptedConsole()
    assert result(await run_app("summarize", EIFFEL, driver=driver, console=console)) == "S2."
    assert len(driver.jobs) == 1 and console.text == "S2.\n"


async def test_long_text_is_mapped_over_child_processes_then_reduced():
    driver = FakeDriver(script)
    text = "\n\n".join([EIFFEL] * 6)
    status = await run_app("summarize", text, driver=driver, chunk_chars=len(EIFFEL) * 2 + 1)
    assert result(status) == "S3."  # three chunk summaries of one sentence each, reduced
    assert len(driver.jobs) == 4
    assert sorted(driver.batches[0]) == [1, 2, 3]  # the three map calls were served together


async def test_summarize_a_file(tmp_path):
    (tmp_path / "a.txt").write_text(EIFFEL)
    assert result(await run_app("summarize", driver=FakeDriver(script), file=str(tmp_path / "a.txt"))) == "S2."
    status = await run_app("summarize", file=str(tmp_path / "missing.txt"))
    assert status.state is ProcState.FAILED and "no such file" in status.reason


async def test_a_chunk_too_big_for_the_window_is_halved():
    driver = FakeDriver(script, context_length=400)
    text = "\n\n".join([EIFFEL] * 2)
    assert result(await run_app("summarize", text, driver=driver, chunk_chars=1000)) == "S2."
    assert len(driver.jobs) == 3  # the map call overflowed (not served), its halves were, then the final call


def test_context_overflow_is_what_the_fake_raises():
    with pytest.raises(ContextOverflow):
        from llmos.kernel.model import GenerationJob, SamplingParams

        FakeDriver(context_length=5).prepare(GenerationJob(id=1, pid=1, sampling=SamplingParams(), prompt="x" * 10))


@pytest.mark.model
async def test_summarize_on_the_real_model(smollm2):
    out = result(await run_app("summarize", EIFFEL, driver=smollm2.driver, max_tokens=40, timeout=60))
    assert out and len(out) < len(EIFFEL) * 2 and "Eiffel" in out
