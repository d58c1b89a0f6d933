"""`llmos eval`'s three evals on the real SmolLM2-135M-Instruct, on the example files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llmos import evaluation
from llmos.drivers import compute
from llmos.eval_data import read_qa, read_tool_prompts, read_windows
from llmos.evaluation import EvalPlan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "eval"


def reference_perplexity(model, texts: list[str]) -> float:  # noqa: ANN001
    """bench/quality.py's way: the Hugging Face model's own loss over each text's tokens."""
    import torch

    hf, tokenizer = model.driver.hf_model, model.driver.hf_tokenizer
    total = count = 0.0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            total += float(hf(ids, labels=ids).loss.float()) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


@pytest.mark.model
async def test_the_three_evals_on_the_example_files(smollm2):
    windows = read_windows(EXAMPLES / "text.txt")
    tool_prompts = read_tool_prompts(EXAMPLES / "tools.jsonl", evaluation.registered_tools())
    plan = EvalPlan(windows=windows, qa=read_qa(EXAMPLES / "qa.jsonl", limit=3),
                    tools=[tool_prompts[i] for i in (0, 2, 12, 13)])  # calculator, current_time, none, none
    report = await evaluation.evaluate_model(smollm2.driver, plan)

    ppl = report.perplexity
    reference = compute.call(reference_perplexity, smollm2, [w.context + w.continuation for w in windows])
    assert math.isfinite(ppl.perplexity) and abs(ppl.perplexity / reference - 1) < 0.3, (ppl.perplexity, reference)
    assert ppl.tokens > 300 and ppl.windows == len(windows)

    assert [item.line for item in report.qa.items] == [1, 2, 3] and all(item.reply for item in report.qa.items)
    assert report.qa.contains > 0  # "Paris" at least

    assert 0 <= (report.tools.parse_rate or 0) <= 1 and report.tools.accuracy > 0
    assert len(report.tools.items) == 4
