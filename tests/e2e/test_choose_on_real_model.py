"""`choose` on the real SmolLM2 model: the engine's scores are the model's own
log-probabilities, they come beside other processes' generation, and a supervisor routes."""

from __future__ import annotations

import pytest
import torch

import llmos
from llmos.drivers.decisions import LikelihoodDecisions
from llmos.syscalls import Choice, Sys

pytestmark = pytest.mark.model

OPTIONS = ["Paris", "Lyon", "the city of Marseille"]


def reference_logprobs(model: llmos.Model, prompt: list[int], option: str) -> float:
    """log P(option | prompt) by the HF model's own forward pass, summed over its tokens."""
    driver = model.driver
    ids = driver.tokenizer.encode(option, add_special_tokens=False)
    with torch.inference_mode():
        logits = driver.hf_model(torch.tensor([prompt + ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(ids))


async def test_choose_scores_are_the_model_s_log_probabilities(smollm2_f32):
    async def main(sys: Sys) -> Choice:
        return await sys.choose("What is the capital of France?", OPTIONS)

    async with llmos.boot(smollm2_f32, memory=None, embedder=None) as kernel:
        choice = (await kernel.wait((await kernel.spawn(main)).pid, timeout=120)).result
    messages = LikelihoodDecisions().choice_messages("What is the capital of France?", OPTIONS, None, None)
    prompt = smollm2_f32.driver.tokenize(messages)
    expected = [reference_logprobs(smollm2_f32, prompt, option) for option in OPTIONS]
    assert choice.logprobs == pytest.approx(expected, abs=1e-3)
    assert choice.logprobs[0] > choice.logprobs[1] and choice.similarities is None  # Paris before Lyon
    assert choice.tokens[2] > 1 and choice.prompt_tokens == len(prompt)


async def test_choices_run_beside_generation(smollm2):
    async def story(sys: Sys) -> str:
        return (await sys.chat("Tell me a story about a fox.", max_tokens=48)).text

    async def pick(sys: Sys, question: str) -> str:
        return (await sys.choose(question, ["math", "poet", "translator"],
                                 descriptions=["solves sums", "writes poems", "translates text"])).option

    async with llmos.boot(smollm2, memory=None) as kernel:
        teller = await kernel.spawn(story)
        pickers = [await kernel.spawn(pick, q) for q in ("What is 17 times 3?", "Write a haiku about rain.",
                                                          "Say 'thank you' in Spanish.")]
        picks = [(await kernel.wait(p.pid, timeout=120)).result for p in pickers]
        told = await kernel.wait(teller.pid, timeout=120)
    assert told.ok and told.result.strip()
    assert picks == ["math", "poet", "translator"]


async def test_a_supervisor_routes_each_task_to_its_specialist(smollm2):
    from llmos.apps.workflows.supervisor import supervisor

    team = [{"name": "translator", "description": "Translates text into another language."},
            {"name": "math", "description": "Solves arithmetic and math problems."},
            {"name": "poet", "description": "Writes poems."}]
    tasks = ["Translate 'good night' into German.", "What is 12 plus 30?", "Write a short poem about the sea."]
    async with llmos.boot(smollm2, memory=None) as kernel:
        status = await kernel.wait((await kernel.spawn(supervisor, team, tasks)).pid, timeout=300)
    assert status.ok, status.reason
    assert [r["route"] for r in status.result["results"]] == [["translator"], ["math"], ["poet"]]
