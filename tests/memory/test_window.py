"""The pager on the scripted FakeDriver (one token per prompt character): eviction order,
pinning, budgets, summaries, recall, determinism, and the context syscalls. The archive
is a real embedded store in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

import llmos
from llmos.kernel.errors import ContextOverflow, Errno, InvalidRequest
from llmos.kernel.memory import ContextSnapshot
from llmos.memory.window import RECALL_HEADER, SUMMARY_HEADER
from llmos.testing import FakeDriver, caught, memory_script, result, spawn_and_wait

CONTEXT = 2000  # FakeDriver tokens are characters: the window budget is 2000 - 256 = 1744


def turn(i: int) -> str:
    return f"turn {i}: " + "some filler words to take room " * 3


async def talk(driver: FakeDriver, tmp_path: Path, app, *args, **boot):  # noqa: ANN001
    async with llmos.boot(driver, memory=tmp_path / "store", **boot) as kernel:
        status = await spawn_and_wait(kernel, app, *args, timeout=60, name="talker")
    return result(status), kernel


def chats(driver: FakeDriver) -> list[str]:
    return [p for p in driver.prompts if "running summary" not in p]


def summary_requests(driver: FakeDriver) -> list[str]:
    return [p for p in driver.prompts if "running summary" in p]


async def long_talk(sys, n=24):  # noqa: ANN001
    for i in range(n):
        await sys.chat(turn(i))
    return await sys.context.stats()


async def test_a_long_conversation_pages_out_and_every_prompt_fits(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=CONTEXT)
    stats, kernel = await talk(driver, tmp_path, long_talk)
    assert stats.budget == CONTEXT - 256 and stats.context_length == CONTEXT
    assert stats.evicted > 0 and stats.evicted % 2 == 0  # whole turns leave
    assert stats.entries + stats.evicted == 48
    assert all(len(job.prompt_ids) <= stats.budget for job in driver.jobs)
    last = chats(driver)[-1]
    assert turn(23) in last and turn(0) not in last
    assert last.index("<user>turn") < last.index(turn(23))  # the most recent turns stay, in order
    assert not last.split("\n", 1)[0].startswith("<assistant>")


async def test_eviction_takes_the_oldest_first_and_summarizes_them(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=CONTEXT)
    stats, kernel = await talk(driver, tmp_path, long_talk)
    requests = summary_requests(driver)
    assert len(requests) == stats.summaries >= 1 and stats.summary_failures == 0
    assert turn(0) in requests[0] and "(nothing yet)" in requests[0]
    assert f"Summary so far: summary {len(requests) - 1}" in requests[-1]  # each folds in the previous one
    assert f"{SUMMARY_HEADER}summary {len(requests)}" in chats(driver)[-1]
    summarize = [e for e in kernel.trace if e.call == "context.summarize"]
    assert len(summarize) == stats.summaries and {e.outcome for e in summarize} == {"ok"}


async def test_summaries_are_accounted_to_the_process(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=CONTEXT)

    async def app(sys):  # noqa: ANN001
        stats = await long_talk(sys)
        me = [p for p in await sys.ps() if p.pid == sys.pid][0]
        return stats, me.stats.prompt_tokens

    (stats, prompt_tokens), kernel = await talk(driver, tmp_path, app)
    assert prompt_tokens == sum(len(job.prompt_ids) for job in driver.jobs)  # summary jobs included
    assert sum(1 for job in driver.jobs if "running summary" in driver.render(job)) == stats.summaries


async def test_pinned_messages_are_never_evicted_and_come_first(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=CONTEXT)

    async def app(sys):  # noqa: ANN001
        await sys.context.append("You are Ada, a ship's computer.", role="system", pin=True)
        await sys.chat("first question")
        await sys.context.pin(-1)  # the reply to it, pinned
        return await long_talk(sys)

    stats, _ = await talk(driver, tmp_path, app)
    assert stats.pinned == 2 and stats.evicted > 0
    for prompt in chats(driver)[1:]:
        assert prompt.startswith("<system>You are Ada, a ship's computer.\n<assistant>ok\n")
    assert "<user>first question" not in chats(driver)[-1]  # its (unpinned) question was evicted


async def test_a_message_that_cannot_fit_is_e2big_and_the_conversation_goes_on(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=300)

    async def app(sys):  # noqa: ANN001
        await sys.chat("hello")
        err = await caught(sys.chat("x" * 400))
        ok = await sys.chat("still here")
        return err, ok.text, await sys.context.stats()

    (err, text, stats), _ = await talk(driver, tmp_path, app)
    assert type(err) is ContextOverflow and err.code is Errno.E2BIG
    assert "context window is 300 tokens" in err.message and "nothing left in it can be evicted" in err.message
    assert text == "ok" and stats.entries == 4  # the failed turn never joined


async def test_pinning_more_than_the_model_holds_is_e2big(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=300)

    async def app(sys):  # noqa: ANN001
        await sys.context.append("y" * 150, role="system", pin=True)
        too_much = await caught(sys.context.append("z" * 200, role="system", pin=True))
        return too_much, await sys.context.stats()

    (too_much, stats), _ = await talk(driver, tmp_path, app)
    assert type(too_much) is ContextOverflow and "the pinned messages need" in too_much.message
    assert stats.pinned == stats.entries == 1


async def test_the_same_inputs_give_the_same_prompts(tmp_path: Path) -> None:
    runs = []
    for n in range(2):
        driver = FakeDriver(script=memory_script(), context_length=CONTEXT)
        await talk(driver, tmp_path / str(n), long_talk)
        runs.append(driver.prompts)
    assert runs[0] == runs[1]


async def test_a_fact_evicted_early_is_recalled_when_it_is_asked_about(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=CONTEXT)

    async def app(sys):  # noqa: ANN001
        await sys.chat("My locker code is 4417.")
        await long_talk(sys, 20)
        await sys.chat("What is my locker code?")
        return await sys.context.stats()

    stats, _ = await talk(driver, tmp_path, app)
    last = chats(driver)[-1]
    assert "<user>My locker code is 4417." not in last  # evicted...
    assert RECALL_HEADER in last and "user: My locker code is 4417." in last  # ...and recalled
    assert stats.recalled >= 1 and stats.last_prompt_tokens == len(last) <= stats.budget
    assert last.index(RECALL_HEADER) < last.index("<user>turn")  # before the recent turns


async def test_recency_policy_neither_summarizes_nor_recalls_but_archives(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=CONTEXT)

    async def app(sys):  # noqa: ANN001
        await sys.chat("My locker code is 4417.")
        stats = await long_talk(sys, 20)
        await sys.chat("What is my locker code?")
        return stats, await sys.recall("locker code", k=1)

    (stats, found), _ = await talk(driver, tmp_path, app, context_policy="recency")
    assert stats.policy == "recency" and stats.evicted > 0 and stats.summaries == 0
    assert summary_requests(driver) == [] and RECALL_HEADER not in chats(driver)[-1]
    assert found[0].text == "user: My locker code is 4417." and found[0].metadata["kind"] == "context"


async def test_a_failed_summary_keeps_the_text_archived_and_the_chat_going(tmp_path: Path) -> None:
    def script(prompt: str) -> str:
        if "running summary" in prompt:
            raise RuntimeError("summarizer down")
        return "ok"

    driver = FakeDriver(script=script, context_length=CONTEXT)

    async def app(sys):  # noqa: ANN001
        stats = await long_talk(sys)
        return stats, await sys.recall(turn(0), k=1)

    (stats, found), kernel = await talk(driver, tmp_path, app)
    assert stats.summaries == 0 and stats.summary_failures >= 1 and stats.evicted > 0
    assert found[0].text.startswith("user: turn 0:")
    assert {e.outcome for e in kernel.trace if e.call == "context.summarize"} == {"EIO"}


async def test_without_a_store_evicted_messages_stay_in_the_kernel(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=CONTEXT)
    async with llmos.boot(driver, memory=None) as kernel:
        stats = result(await spawn_and_wait(kernel, long_talk, timeout=60))
    assert stats.evicted > 0 and stats.unarchived == stats.evicted


async def test_a_small_context_budget_option(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=CONTEXT)
    stats, _ = await talk(driver, tmp_path, long_talk, context_budget=800)
    assert stats.budget == 800
    assert all(len(job.prompt_ids) <= 800 for job in driver.jobs if "running summary" not in driver.render(job))


# -- the context syscalls ----------------------------------------------------------------------------
async def test_snapshot_restore_and_clear(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=CONTEXT)

    async def app(sys):  # noqa: ANN001
        await sys.context.append("Be terse.", role="system", pin=True)
        await sys.chat("remember the blue door")
        saved = await sys.context.snapshot()
        await sys.chat("something else")
        restored = await sys.context.restore(saved.model_dump(mode="json"))  # JSON round trip
        await sys.chat("after restore")
        cleared = await sys.context.clear()
        await sys.chat("after clear")
        return saved, restored, cleared, await sys.recall("blue door", k=1)

    (saved, restored, cleared, found), _ = await talk(driver, tmp_path, app)
    assert isinstance(saved, ContextSnapshot) and [e.content for e in saved.entries] == [
        "Be terse.", "remember the blue door", "ok"]
    assert restored.entries == 3 and cleared.entries == 1 and cleared.pinned == 1
    prompts = chats(driver)
    assert prompts[2] == "<system>Be terse.\n<user>remember the blue door\n<assistant>ok\n<user>after restore\n<assistant>"
    assert prompts[3].startswith("<system>Be terse.\n") and prompts[3].endswith("\n<user>after clear\n<assistant>")
    assert "<user>remember the blue door" not in prompts[3]
    assert found[0].text == "user: remember the blue door"  # clear archives, never drops


async def test_stats_count_the_model_tokens(tmp_path: Path) -> None:
    driver = FakeDriver(script=memory_script(), context_length=CONTEXT)

    async def app(sys):  # noqa: ANN001
        empty = await sys.context.stats()
        after = await sys.context.append("hello", role="user")
        return empty, after

    (empty, after), _ = await talk(driver, tmp_path, app)
    assert (empty.used, empty.entries) == (0, 0)
    assert after.used == len("<user>hello\n") and after.entries == 1


@pytest.mark.parametrize(("call", "args"), [
    ("context.pin", {"index": 5}),
    ("context.append", {"content": "x", "role": "wizard"}),
    ("context.restore", {"snapshot": {"entries": [{"role": "user"}]}}),
])
async def test_bad_context_calls_are_einval(tmp_path: Path, call: str, args: dict) -> None:
    driver = FakeDriver(script=memory_script(), context_length=CONTEXT)

    async def app(sys):  # noqa: ANN001
        return await caught(sys.syscall({"call": call, **args}))

    err, _ = await talk(driver, tmp_path, app)
    assert type(err) is InvalidRequest
