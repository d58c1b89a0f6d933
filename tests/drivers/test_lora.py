"""LoRA adapters served side by side (drivers/lora.py) on the tiny random Llama: each row of a
batch with its own adapter gives what peft's own merged model gives, token for token (greedy,
float32); prefixes are never shared across adapters; bad adapter folders are refused, naming
what is wrong. The same on the real SmolLM2 is in tests/e2e/test_adapters_on_real_model.py."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmos.drivers.lora import AdapterError
from llmos.kernel.model import GenerationJob, SamplingParams
from llmos.testing import TINY_VOCAB, merged_with_lora, random_lora, tiny_engine, one_torch_thread

EOS = TINY_VOCAB - 1


one_thread = pytest.fixture(autouse=True)(one_torch_thread)


@pytest.fixture(params=["kernel", "pytorch"])
def engine(request):
    """The tiny model's engine, its adapters' passes through the compiled lora_add, or through
    PyTorch's matmuls (where the kernel cannot be built): the same tokens either way."""
    engine = tiny_engine()
    assert engine.runner.adapters.kernel is not None  # the machine builds it (drivers/paged.py)
    if request.param == "pytorch":
        engine.runner.adapters.kernel = None  # before any adapter is laid out
    return engine


@pytest.fixture
def adapters(engine, tmp_path):
    """Two adapters of the tiny model: one on every projection, one on attention alone."""
    model = engine.runner.model
    return {"all": random_lora(model, tmp_path / "all", seed=1),
            "attn": random_lora(model, tmp_path / "attn", seed=2, rank=2, targets=("q_proj", "v_proj"), use_rslora=True)}


def _prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(EOS) for _ in range(n)]


def _job(job_id: int, prompt: list[int], adapter: str | None, n: int = 12) -> GenerationJob:
    return GenerationJob(id=job_id, pid=1, sampling=SamplingParams(max_tokens=n), prompt_ids=list(prompt),
                         adapter=adapter)


def _run(engine, jobs) -> list[list[int]]:
    while any(not j.finished for j in jobs):
        engine.step([j for j in jobs if not j.finished], lambda pieces: None)
    engine.step([], lambda pieces: None)
    return [j.token_ids for j in jobs]


def _generate(model, prompt: list[int], n: int = 12) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    tokens = out[0, len(prompt):].tolist()
    return tokens[: tokens.index(EOS)] if EOS in tokens else tokens


def test_an_adapter_alone_gives_what_peft_merged_gives(engine, adapters):
    engine.load_adapter("all", adapters["all"])
    prompt = _prompt(21, seed=3)
    [tokens] = _run(engine, [_job(1, prompt, "all")])
    assert tokens == _generate(merged_with_lora(engine.runner.model, adapters["all"]), prompt)
    assert tokens != _generate(engine.runner.model, prompt)  # the adapter changes the answer


def test_a_mixed_batch_equals_each_adapter_alone(engine, adapters):
    for name, folder in adapters.items():
        engine.load_adapter(name, folder)
    prompts = [_prompt(n, seed=n) for n in (9, 23, 17, 30)]
    names = ["all", None, "attn", "all"]
    together = _run(engine, [_job(i, p, a) for i, (p, a) in enumerate(zip(prompts, names, strict=True))])
    references = {None: engine.runner.model, **{n: merged_with_lora(engine.runner.model, f) for n, f in adapters.items()}}
    assert together == [_generate(references[a], p) for p, a in zip(prompts, names, strict=True)]


def test_prefixes_are_not_shared_across_adapters(engine, adapters):
    engine.load_adapter("all", adapters["all"])
    prompt = _prompt(40, seed=5)
    _run(engine, [_job(1, prompt, None)])
    adapted = _job(2, prompt, "all")
    assert engine.blocks.allocate(adapted) and engine.blocks.cached_tokens(adapted) == 0
    engine.blocks.release(adapted)
    base_again = _job(3, prompt, None)
    assert engine.blocks.allocate(base_again) and engine.blocks.cached_tokens(base_again) == 32
    engine.blocks.release(base_again)
    [tokens] = _run(engine, [_job(4, prompt, "all")])
    assert tokens == _generate(merged_with_lora(engine.runner.model, adapters["all"]), prompt)


def test_replacing_an_adapter_forgets_its_cached_prefixes(engine, adapters, tmp_path):
    engine.load_adapter("x", adapters["all"])
    prompt = _prompt(40, seed=6)
    _run(engine, [_job(1, prompt, "x")])
    engine.load_adapter("x", adapters["all"])  # the same folder: nothing changes
    assert engine.blocks.statistics()["kv_blocks_cached"] > 0
    engine.load_adapter("x", adapters["attn"])
    assert engine.blocks.statistics()["kv_blocks_cached"] == 0
    [tokens] = _run(engine, [_job(2, prompt, "x")])
    assert tokens == _generate(merged_with_lora(engine.runner.model, adapters["attn"]), prompt)


def test_an_adapter_in_use_is_not_unloaded(engine, adapters):
    engine.load_adapter("all", adapters["all"])
    job = _job(1, _prompt(10, seed=7), "all", n=30)
    engine.step([job], lambda pieces: None)
    with pytest.raises(RuntimeError, match="in use"):
        engine.unload_adapter("all")
    _run(engine, [job])
    engine.unload_adapter("all")
    assert engine.runner.adapters.adapters == {}


def test_a_job_with_an_adapter_not_loaded_fails_its_step(engine):
    with pytest.raises(AdapterError, match="not loaded: ghost"):
        engine.step([_job(1, _prompt(5, seed=1), "ghost")], lambda pieces: None)


# -- bad folders -------------------------------------------------------------------------------------
def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(("changes", "message"), [
    ({"use_dora": True}, "use_dora"), ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "all"}, "bias"), ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
    ({"peft_type": "IA3"}, "peft_type")])
def test_lora_variants_the_engine_does_not_compute_are_refused(engine, adapters, changes, message):
    _edit_config(adapters["all"], **changes)
    with pytest.raises(AdapterError, match=message):
        engine.load_adapter("all", adapters["all"])


def test_a_folder_without_a_config_or_weights_is_refused(engine, tmp_path, adapters):
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        engine.load_adapter("x", tmp_path)
    (adapters["all"] / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"):
        engine.load_adapter("x", adapters["all"])


def test_an_adapter_of_another_model_is_refused(engine, adapters):
    path = adapters["all"] / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if "q_proj.lora_A" in k)
    tensors[key] = torch.zeros(tensors[key].shape[0], 96)  # a hidden size of 96, not 64
    save_file(tensors, str(path))
    with pytest.raises(AdapterError, match="an adapter of another model"):
        engine.load_adapter("x", adapters["all"])
    assert engine.runner.adapters.adapters == {}


def test_an_adapter_of_the_embeddings_is_refused(engine, adapters):
    path = adapters["all"] / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.zeros(4, TINY_VOCAB)
    save_file(tensors, str(path))
    with pytest.raises(AdapterError, match="does not serve with LoRA"):
        engine.load_adapter("x", adapters["all"])
