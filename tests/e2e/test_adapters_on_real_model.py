"""LoRA adapters on the real SmolLM2, through the kernel: processes on different adapters of
one base share its batches and each gets what its adapter gives alone (greedy, float32), which
is what peft's merged model gives; a process moves to another adapter between turns with its
context window kept; a running kernel loads a new adapter without a restart."""

from __future__ import annotations

import anyio
import pytest
import torch

import llmos
from llmos import library
from llmos.kernel.errors import ModelNotServed
from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams
from llmos.syscalls import Sys
from llmos.testing import merged_with_lora, random_lora

pytestmark = pytest.mark.model

QUESTION = "Name three colours of the rainbow."


@pytest.fixture
def tuned(smollm2_f32, tmp_path):
    """Two random adapters of SmolLM2 in the library ("warm", "cool"), unloaded afterwards
    from the session's shared engine."""
    model = smollm2_f32.driver.hf_model
    folders = {"warm": random_lora(model, tmp_path / "warm", seed=11, rank=8),
               "cool": random_lora(model, tmp_path / "cool", seed=12, rank=4, b_std=0.2,
                                   targets=("q_proj", "v_proj", "down_proj"))}
    for name, folder in folders.items():
        library.create(name, "smollm2", adapter=folder)
    yield folders
    for name in folders:
        if name in smollm2_f32.driver.adapters():
            smollm2_f32.driver.unload_adapter(name)


async def ask_as(sys: Sys, model: str | None, question: str = QUESTION) -> str:
    if model is not None:
        await sys.set_model(model)
    reply = await sys.chat(question, max_tokens=12)
    return reply.text


async def test_processes_on_different_adapters_share_batches_and_answer_as_alone(smollm2_f32, tuned):
    plan = ["warm", None, "cool", "warm"]
    async with llmos.boot(smollm2_f32, memory=None) as kernel:
        alone = []
        for model in plan:
            alone.append((await kernel.wait((await kernel.spawn(ask_as, model)).pid)).result)
        steps_before = kernel.generation.steps
        procs = [await kernel.spawn(ask_as, model) for model in plan]
        together = [(await kernel.wait(p.pid)).result for p in procs]
        shared_steps = kernel.generation.steps - steps_before
    assert together == alone
    assert len({alone[0], alone[1], alone[2]}) == 3  # each adapter answers its own way
    assert shared_steps < 2 * 12  # four replies of up to 12 tokens: mostly decoded together


def test_the_engine_with_an_adapter_gives_what_peft_merged_gives(smollm2_f32, tuned):
    driver = smollm2_f32.driver
    driver.load_adapter("warm", tuned["warm"])
    prompt = driver.tokenize([ChatMessage(role="user", content=QUESTION)])
    job = GenerationJob(id=10**6, pid=1, sampling=SamplingParams(max_tokens=12), prompt_ids=list(prompt),
                        adapter="warm")
    engine = driver.engine
    while not job.finished:
        engine.step([job], lambda pieces: None)
    engine.step([], lambda pieces: None)
    merged = merged_with_lora(driver.hf_model, tuned["warm"])
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = merged.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    expected = [t for t in out[0, len(prompt):].tolist() if t not in driver.eos_ids]
    assert job.token_ids == expected[: len(job.token_ids)] and len(job.token_ids) >= min(len(expected), 12) - 1


async def test_a_process_moves_to_another_adapter_between_turns_keeping_its_window(smollm2_f32, tuned):
    async def two_turns(sys: Sys) -> tuple[int, int, str | None]:
        first = await sys.chat("My name is Ada.", max_tokens=8)
        await sys.set_model("cool")
        second = await sys.chat("What is my name?", max_tokens=8)
        mine = [p for p in await sys.ps() if p.pid == await sys.getpid()][0]
        return first.prompt_tokens, second.prompt_tokens, mine.model

    async with llmos.boot(smollm2_f32, memory=None) as kernel:
        status = await kernel.wait((await kernel.spawn(two_turns)).pid)
    first_prompt, second_prompt, model = status.result
    assert model == "cool"
    assert second_prompt > first_prompt + 8  # the first exchange is still in its window


async def idle(sys: Sys) -> None:
    await anyio.sleep_forever()


async def test_set_model_refuses_unknown_models_and_moves_back_to_the_base(smollm2_f32, tuned):
    async with llmos.boot(smollm2_f32, memory=None) as kernel:
        proc = await kernel.spawn(idle)
        with pytest.raises(ModelNotServed, match="no-such"):
            await kernel.set_model(proc.pid, "no-such")
        await kernel.set_model(proc.pid, "warm")
        assert kernel.procs.get_live(proc.pid).model == "warm"
        await kernel.set_model(proc.pid, "smollm2")  # back to the base
        assert kernel.procs.get_live(proc.pid).model is None
        kernel.kill(proc.pid)
