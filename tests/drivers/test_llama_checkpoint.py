"""drivers/llama_checkpoint.py: a Llama checkpoint read without transformers' model classes
computes, through the llama engine, exactly what transformers' own module does."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmos.drivers.engine import Engine, EngineConfig
from llmos.drivers.llama_checkpoint import CheckpointLlama, CheckpointMismatch, load_checkpoint, read_config
from llmos.drivers.transformers_driver import load_transformers_folder
from llmos.testing import one_torch_thread, tiny_model, tiny_tokenizer

one_thread = pytest.fixture(autouse=True)(one_torch_thread)


def _saved(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return _saved(tiny_model(seed=3), tmp_path / "tiny")


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _engine(model) -> Engine:
    return Engine(model, tiny_tokenizer(), eos_ids=frozenset(), context_length=512,
                  config=EngineConfig(max_batch=2, prefill_chunk=64, kv_cache_mb=1, quantization="none"),
                  dtype=model.dtype, device="cpu")


def _greedy(engine: Engine, prompt: list[int], n: int) -> list[int]:
    from llmos.kernel.model import GenerationJob, SamplingParams

    job = GenerationJob(id=1, pid=1, sampling=SamplingParams(max_tokens=n, temperature=0), prompt_ids=list(prompt))
    engine.init_state(job)
    while not job.finished:
        engine.step([job], lambda pieces: None)
    engine.step([], lambda pieces: None)
    return job.token_ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_weights_are_transformers_own_in_the_dtype_asked(tiny_folder, dtype):
    from transformers import AutoModelForCausalLM

    config = read_config(tiny_folder)
    assert config is not None
    ours = load_checkpoint(tiny_folder, config, dtype)
    theirs = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=dtype)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert ours_state.keys() == theirs_state.keys()
    for name, tensor in theirs_state.items():
        assert torch.equal(ours_state[name], tensor), name
    assert ours.dtype == dtype and ours.device.type == "cpu"
    assert not any(p.requires_grad for p in ours.parameters())


def test_the_rotary_embedding_is_transformers_own(tiny_folder):
    from transformers import AutoModelForCausalLM

    config = read_config(tiny_folder)
    assert config is not None
    ours = load_checkpoint(tiny_folder, config, torch.bfloat16)
    theirs = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.bfloat16)
    positions = torch.tensor([[0, 1, 2, 7, 300, 511]])
    x = torch.zeros(1, dtype=torch.bfloat16)
    for got, expected in zip(ours.model.rotary_emb(x, positions), theirs.model.rotary_emb(x, positions)):
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_the_engine_gives_the_same_tokens_and_logits_on_either_module(tiny_folder):
    from transformers import AutoModelForCausalLM

    config = read_config(tiny_folder)
    assert config is not None
    ours, theirs = load_checkpoint(tiny_folder, config, torch.float32), AutoModelForCausalLM.from_pretrained(tiny_folder)
    prompt = [5, 17, 33, 2, 90, 41, 8]
    assert _greedy(_engine(ours), prompt, 12) == _greedy(_engine(theirs), prompt, 12)
    with torch.inference_mode():
        expected = theirs(torch.tensor([prompt])).logits[0, -1]
    from llmos.drivers.llama import Batch

    engine = _engine(ours)
    blocks = torch.tensor([[1]])
    logits = engine.runner.forward(Batch(tables=blocks, tokens=torch.tensor([prompt]), starts=torch.tensor([0]),
                                         lengths=torch.tensor([len(prompt)])))
    assert torch.allclose(logits[0], expected, atol=1e-5, rtol=0)


def test_tied_embeddings_share_the_embedding_as_the_output_projection(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tied = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    folder = tmp_path / "tied"
    tied.save_pretrained(folder)
    assert "lm_head.weight" not in load_file(str(folder / "model.safetensors"))
    config = read_config(folder)
    assert config is not None
    model = load_checkpoint(folder, config, torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, tied.lm_head.weight)


def test_sharded_weights_are_read_from_the_index(tiny_folder):
    weights = load_file(str(tiny_folder / "model.safetensors"))
    (tiny_folder / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, members in shards.items():
        save_file({name: weights[name] for name in members}, str(tiny_folder / shard), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {name: shard for shard, members in shards.items() for name in members}}
    (tiny_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (tiny_folder / "consolidated.safetensors").write_bytes(b"another format's file, never read")
    config = read_config(tiny_folder)
    assert config is not None
    model = load_checkpoint(tiny_folder, config, torch.float32)
    assert torch.equal(model.model.norm.weight, weights["model.norm.weight"])


@pytest.mark.parametrize("changes", [
    {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
    {"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_parameters": None},
    {"hidden_act": "gelu"},
    {"architectures": ["Gemma3ForCausalLM"]},
    {"sliding_window": 64},
    {"num_hidden_layers": "many"},
])
def test_configs_it_cannot_promise_to_run_as_transformers_does_are_left_to_transformers(tiny_folder, changes):
    _edit_config(tiny_folder, **changes)
    assert read_config(tiny_folder) is None


def test_a_sliding_window_as_long_as_the_context_changes_nothing(tiny_folder):
    _edit_config(tiny_folder, sliding_window=512, architectures=["MistralForCausalLM"])
    config = read_config(tiny_folder)
    assert config is not None and config.architectures == ["MistralForCausalLM"]


def test_weights_that_do_not_match_the_config_are_a_typed_error(tiny_folder):
    _edit_config(tiny_folder, intermediate_size=96)
    config = read_config(tiny_folder)
    assert config is not None
    with pytest.raises(CheckpointMismatch, match="intermediate|size mismatch|shape"):
        load_checkpoint(tiny_folder, config, torch.float32)


def test_the_driver_loads_a_mismatched_checkpoint_through_transformers_instead(tiny_folder, caplog):
    weights = load_file(str(tiny_folder / "model.safetensors"))
    weights["model.extra_scale"] = torch.ones(3)  # a tensor transformers ignores (with a warning) and llmos refuses
    save_file(weights, str(tiny_folder / "model.safetensors"), metadata={"format": "pt"})
    with caplog.at_level(logging.INFO, logger="llmos.drivers.transformers_driver"):
        driver = load_transformers_folder(tiny_folder, "tiny")
    assert not isinstance(driver.model, CheckpointLlama)
    assert "loading it through transformers" in caplog.text
    assert driver.hf_model is driver.model


def test_the_driver_reads_a_llama_checkpoint_itself_and_loads_transformers_only_when_asked(tiny_folder):
    driver = load_transformers_folder(tiny_folder, "tiny")
    assert isinstance(driver.model, CheckpointLlama)
    assert driver.eos_ids == {tiny_tokenizer().eos_token_id}
    reference = driver.hf_model
    assert type(reference).__name__ == "LlamaForCausalLM" and reference.dtype == driver.model.dtype
    assert driver.hf_model is reference  # loaded once


def test_end_of_sequence_ids_come_from_the_generation_config_else_the_config(tiny_folder):
    (tiny_folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    config = read_config(tiny_folder)
    assert config is not None
    assert load_checkpoint(tiny_folder, config, torch.float32).eos_token_ids() == [7, 9]
    (tiny_folder / "generation_config.json").unlink()
    assert load_checkpoint(tiny_folder, config, torch.float32).eos_token_ids() == [config.eos_token_id]


@pytest.mark.model
def test_smollm2_is_read_by_llmos_and_matches_transformers(smollm2):
    """The default model loads without transformers' model classes, and its weights are
    transformers' own (test_transformers_driver.py holds its replies to hf_model.generate's)."""
    driver = smollm2.driver
    assert isinstance(driver.model, CheckpointLlama)
    reference = driver.hf_model.state_dict()
    for name, tensor in driver.model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
