"""The evals through a kernel on the FakeDriver: each item its own process, batched; the
figures computed from the scripted answers; tools chosen but never run. (On the real model:
test_evaluation_on_real_model.py.)"""

from __future__ import annotations

import math

import pytest

import llmos
from llmos import evaluation
from llmos.eval_data import QAItem, ToolPrompt, Window, text_windows
from llmos.evaluation import EvalPlan
from llmos.kernel.errors import ConfigError
from llmos.testing import FakeDriver

BOOT = {"embedder": None, "memory": None, "mcp_servers": None, "durable": None}


async def test_perplexity_scores_every_window_in_one_batch() -> None:
    driver = FakeDriver()  # scores a lone option -0.1 a token, and counts a character a token
    windows = text_windows(" ".join(f"w{i}" for i in range(100)), size=60)
    async with llmos.boot(driver, **BOOT) as kernel:
        result = await evaluation.perplexity(kernel, windows)
    assert result.windows == len(windows) > 4
    assert result.tokens == sum(len(w.continuation) for w in windows)
    assert result.perplexity == pytest.approx(math.exp(0.1)) and result.mean_nll == pytest.approx(0.1)
    assert max(map(len, driver.batches)) > 1  # processes' windows were scored together
    assert sorted(job.prompt for job in driver.jobs) == sorted(w.context for w in windows)  # a window's first word
    assert all(job.token_ids == [] for job in driver.jobs)  # scored, nothing generated


async def test_perplexity_needs_a_model_that_scores() -> None:
    class Remote(FakeDriver):
        can_score = False

    async with llmos.boot(Remote(name="remote"), **BOOT) as kernel:
        with pytest.raises(ConfigError, match="remote cannot score text"):
            await evaluation.perplexity(kernel, [Window(context="a", continuation=" b")])


async def test_qa_scores_greedy_replies_item_by_item() -> None:
    replies = {"Capital of France?": "Paris.", "2 + 2?": "It is 4, of course.", "Largest planet?": "No idea."}
    driver = FakeDriver(lambda prompt: next(a for q, a in replies.items() if q in prompt))
    golds = [("Capital of France?", ("Paris",)), ("2 + 2?", ("4", "four")), ("Largest planet?", ("Jupiter",))]
    items = [QAItem(line=n, question=q, answers=a) for n, (q, a) in enumerate(golds, 1)]
    async with llmos.boot(driver, **BOOT) as kernel:
        result = await evaluation.qa(kernel, items, max_tokens=7)
    assert (result.n, result.exact_match, result.contains, result.errors) == (3, pytest.approx(1 / 3),
                                                                              pytest.approx(2 / 3), 0)
    assert [(i.line, i.reply, i.exact_match, i.contains) for i in result.items] == [
        (1, "Paris.", True, True), (2, "It is 4, of course.", False, True), (3, "No idea.", False, False)]
    assert {(job.sampling.max_tokens, job.sampling.temperature) for job in driver.jobs} == {(7, 0.0)}


# prompt -> the tool the FakeDriver picks, and the arguments it gives
TOOL_SCRIPT = {
    "What is 2+2?": ("calculator", '{"expression": "2+2"}'),
    "Save hi to x.txt": ("write_file", '{"path": "x.txt", "content": "hi"}'),
    "Hello there": ("none", ""),
    "Show my files": ("read_file", '{"wrong": 1}'),  # the wrong tool, and arguments that do not fit it
    "Half a call": ("calculator", '{"expression": '),  # cut short: does not parse
    "Tell a joke": ("calculator", '{"expression": "1"}'),
}


def tool_script(prompt: str) -> str:
    question = next(q for q in TOOL_SCRIPT if q in prompt)
    tool, arguments = TOOL_SCRIPT[question]
    if "Options:" in prompt:  # the choice
        return tool
    return arguments if "Call the tool" in prompt else "Hello to you."


async def test_tools_measures_choice_and_parse_rate_and_runs_nothing(llmos_home) -> None:
    labels = ["calculator", "write_file", "none", "list_files", "calculator", "none"]
    items = [ToolPrompt(line=n, prompt=p, tool=t) for n, (p, t) in enumerate(zip(TOOL_SCRIPT, labels), 1)]
    async with llmos.boot(FakeDriver(tool_script), **BOOT) as kernel:
        result = await evaluation.tools(kernel, items)
    by_prompt = {i.prompt: i for i in result.items}
    assert (result.n, result.accuracy, result.calls, result.parse_rate, result.none_recall) == (
        6, 0.5, 5, 0.6, 0.5)
    assert by_prompt["Save hi to x.txt"].arguments == {"path": "x.txt", "content": "hi"}
    assert by_prompt["Show my files"].picked == "read_file" and not by_prompt["Show my files"].parsed
    half = by_prompt["Half a call"]
    assert (half.called, half.parsed, half.picked, half.correct) == (True, False, None, False)
    assert "cut short" in half.error
    assert set(result.tools) >= {"calculator", "write_file", "run_python"}
    assert not list(llmos_home.rglob("x.txt"))  # write_file was chosen, never run


def test_a_plan_needs_an_eval() -> None:
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        EvalPlan()


async def test_models_side_by_side_with_the_loop_compared() -> None:
    plan = EvalPlan(windows=text_windows("one two three four five six", size=12),
                    qa=[QAItem(question="Say hi", answers=("echo say hi",))], compare_loop=True)
    report = await evaluation.evaluate([FakeDriver(name="a"), FakeDriver(name="b")], plan, inputs={"qa": "q.jsonl"},
                                       **BOOT)
    assert [m.model for m in report.models] == ["a", "b"]
    assert all(m.qa.exact_match == 1.0 and m.tools is None for m in report.models)
    assert all(set(m.sequential_examples_per_s) == {"perplexity", "qa"} for m in report.models)
    assert report.inputs == {"qa": "q.jsonl"} and report.model_dump(mode="json")["models"][0]["qa"]["items"]
