"""Memory on the real SmolLM2 model: a conversation longer than its window keeps working,
and a fact told early comes back after it was paged out. A small window budget (boot
option `context_budget`) makes paging happen within a few turns."""

from __future__ import annotations

from pathlib import Path

import pytest

import llmos
from llmos.memory.window import RECALL_HEADER
from llmos.syscalls import Sys
from llmos.testing import result, spawn_and_wait

pytestmark = pytest.mark.model

BUDGET = 256
FACT = "Remember this: my locker code is 4417."
TOPICS = ["the history of the bicycle", "how bread is baked", "why the sky is blue"]
FILLER = ("People have written a great deal about this over the years, in books, in magazines and in "
          "letters to friends, and many of them disagree about the details, the dates and the names involved, "
          "which makes the whole subject more interesting to read about on a quiet afternoon.")


def about(topic: str) -> str:
    """A long message (~70 tokens) with a short answer: the window fills quickly, the model works little."""
    return f"Here is a note about {topic}. {FILLER} Reply with one short sentence about {topic}."


async def talker(sys: Sys) -> dict:
    replies = [await sys.chat(FACT, max_tokens=16)]
    for topic in TOPICS:
        replies.append(await sys.chat(about(topic), max_tokens=16))
    evicted_before_question = (await sys.context.stats()).evicted
    replies.append(await sys.chat("What is my locker code?", max_tokens=16))
    return dict(replies=replies, evicted=evicted_before_question, stats=await sys.context.stats(),
                found=await sys.recall("locker code", k=1))


async def test_a_long_conversation_pages_out_and_recalls_an_early_fact(smollm2, tmp_path: Path) -> None:
    asked = []
    async with llmos.boot(smollm2, memory=tmp_path, context_budget=BUDGET) as kernel:
        prepare = kernel.driver.prepare

        def spy(job):  # noqa: ANN001, ANN202 - records what the model is asked
            asked.append(job.messages)
            return prepare(job)

        kernel.driver.prepare = spy
        try:
            out = result(await spawn_and_wait(kernel, talker, timeout=300))
        finally:
            del kernel.driver.prepare
        summaries = [e for e in kernel.trace if e.call == "context.summarize"]
    replies, stats = out["replies"], out["stats"]
    # The conversation outgrew the window and kept working, every prompt within the budget.
    assert all(r.finish_reason in ("stop", "length") and r.text.strip() for r in replies)
    assert all(r.prompt_tokens <= BUDGET for r in replies)  # exact, as the model counted them
    assert stats.budget == BUDGET and stats.context_length == smollm2.context_length
    assert out["evicted"] >= 2 and stats.summaries >= 1 and stats.summary_failures == 0
    assert summaries and all(e.outcome == "ok" for e in summaries)
    # The fact was paged out, then recalled into the prompt of the question, and answered.
    last = max((m for m in asked if m and m[-1].content == "What is my locker code?"), key=len)  # not a token count
    assert not any(m.content == FACT for m in last)
    recalled = [m.content for m in last if m.content.startswith(RECALL_HEADER)]
    assert recalled and "my locker code is 4417" in recalled[0] and stats.recalled >= 1, (last, stats)
    assert "4417" in replies[-1].text
    assert "4417" in out["found"][0].text
