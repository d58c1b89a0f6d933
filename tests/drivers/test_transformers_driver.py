"""The transformers driver on the real SmolLM2 model."""

from __future__ import annotations

import pytest
import torch

from llmos.kernel.errors import ContextOverflow
from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams

pytestmark = pytest.mark.model


def _job(job_id: int, *, prompt: str | None = None, question: str | None = None, **sampling) -> GenerationJob:
    messages = (ChatMessage(role="user", content=question),) if question else None
    return GenerationJob(id=job_id, pid=1, sampling=SamplingParams(**sampling), prompt=prompt, messages=messages)


def _run(driver, jobs, max_steps=None):
    pieces: list[tuple[int, str]] = []
    for job in jobs:
        driver.prepare(job)
    steps = max_steps or max(j.sampling.max_tokens for j in jobs)
    driver.run(jobs, steps, lambda batch: pieces.extend((job.id, piece) for job, piece in batch))
    return pieces


def test_greedy_output_equals_model_generate(smollm2):
    driver = smollm2.driver
    job = _job(1, question="What is the capital of France?", max_tokens=24)
    _run(driver, [job])
    ids = torch.tensor([job.prompt_ids])
    reference = driver.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                      do_sample=False)[0, ids.shape[1]:].tolist()
    reference = [t for t in reference if t not in driver.eos_ids][: len(job.token_ids)]
    assert job.token_ids == reference
    assert "Paris" in job.text


def test_batched_greedy_matches_single_runs(smollm2):
    driver = smollm2.driver
    questions = ["What is the capital of France?", "Name a color.", "What is 2+2?"]
    alone = []
    for i, q in enumerate(questions):
        job = _job(i, question=q, max_tokens=12)
        _run(driver, [job])
        alone.append(job.token_ids)
    together = [_job(10 + i, question=q, max_tokens=12) for i, q in enumerate(questions)]
    _run(driver, together)
    # Left padding changes float rounding slightly; the first tokens must agree.
    for single, batched in zip(alone, together, strict=True):
        assert batched.token_ids[:4] == single[:4]
    assert len({tuple(j.token_ids) for j in together}) == 3


def test_streamed_pieces_concatenate_to_the_text(smollm2):
    job = _job(1, question="Write one sentence about the sea.", max_tokens=30)
    pieces = _run(smollm2.driver, [job])
    assert "".join(p for _, p in pieces) == job.text
    assert len([p for _, p in pieces if p]) > 3


def test_stop_string_cuts_the_reply(smollm2):
    job = _job(1, prompt="1, 2, 3, 4, 5, 6,", max_tokens=30, stop=(" 9",))
    pieces = _run(smollm2.driver, [job])
    assert job.finish_reason == "stop"
    assert " 9" not in job.text and job.text.strip().startswith("7")
    assert "".join(p for _, p in pieces) == job.text


def test_max_tokens_ends_with_length(smollm2):
    job = _job(1, prompt="Once upon a time", max_tokens=5)
    _run(smollm2.driver, [job])
    assert job.finish_reason == "length" and len(job.token_ids) == 5


def test_seeded_sampling_is_reproducible_and_seeds_differ(smollm2):
    runs = []
    for seed in (7, 7, 8):
        job = _job(seed, prompt="My favourite animal is", max_tokens=16, temperature=1.0, top_p=0.9, seed=seed)
        _run(smollm2.driver, [job])
        runs.append(job.token_ids)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_resuming_after_a_quantum_continues_the_same_greedy_text(smollm2):
    whole = _job(1, prompt="The three largest cities in Europe are", max_tokens=16)
    _run(smollm2.driver, [whole])
    split = _job(2, prompt="The three largest cities in Europe are", max_tokens=16)
    smollm2.driver.prepare(split)
    smollm2.driver.run([split], 6, lambda batch: None)
    assert not split.finished and len(split.token_ids) == 6
    smollm2.driver.run([split], 16, lambda batch: None)
    assert split.token_ids[:12] == whole.token_ids[:12]


def test_cancelled_job_stops(smollm2):
    job = _job(1, prompt="Count: 1, 2, 3,", max_tokens=50)
    smollm2.driver.prepare(job)

    def cancel_after_first(batch):
        job.cancelled = True

    smollm2.driver.run([job], 50, cancel_after_first)
    assert job.finish_reason == "cancelled" and len(job.token_ids) <= 2


def test_prompt_longer_than_the_context_is_refused(smollm2):
    job = _job(1, prompt="word " * (smollm2.context_length + 10))
    with pytest.raises(ContextOverflow):
        smollm2.driver.prepare(job)


def test_reports_real_context_length(smollm2):
    assert smollm2.context_length == 8192
