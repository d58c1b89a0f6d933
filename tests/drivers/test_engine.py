"""The continuous-batching engine on a tiny random Llama (llmos.testing.tiny_engine), in
milliseconds: greedy outputs against HF's own `generate` (with the paged-attention kernel and
without), continuous batching, KV blocks and the prefix tree, preemption, sampling and stop
conditions. The same behaviours on the real
SmolLM2 model are in test_transformers_driver.py and test_grammar.py."""

from __future__ import annotations

import json
import random

import pytest
import torch

from llmos.drivers.engine import EngineConfig, sample_top_p
from llmos.kernel.blocks import BLOCK, NULL_BLOCK, BlockManager
from llmos.kernel.model import GenerationJob, SamplingParams
from llmos.testing import TINY_VOCAB, tiny_engine, one_torch_thread

EOS = TINY_VOCAB - 1
COLORS = {"type": "object", "properties": {"colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                                      "minItems": 2, "maxItems": 3},
                                           "ok": {"type": "boolean"}},
          "required": ["colors", "ok"], "additionalProperties": False}


one_thread = pytest.fixture(autouse=True)(one_torch_thread)


@pytest.fixture
def engine():
    return tiny_engine()


def _prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(EOS) for _ in range(n)]


def _job(job_id: int, prompt_ids: list[int], **sampling) -> GenerationJob:
    return GenerationJob(id=job_id, pid=1, sampling=SamplingParams(**sampling), prompt_ids=list(prompt_ids))


def _run(engine, jobs, pieces=None):
    """Step until every job finishes, as the kernel would, then let them go; return the
    streamed (job, piece) pairs."""
    sink = [] if pieces is None else pieces
    while any(not j.finished for j in jobs):
        engine.step([j for j in jobs if not j.finished], sink.extend)
    engine.step([], sink.extend)
    return sink


def _steps(engine, jobs, n: int, pieces=None) -> None:
    for _ in range(n):
        engine.step([j for j in jobs if not j.finished], (pieces if pieces is not None else []).extend)


def _reference(engine, prompt: list[int], n: int) -> list[int]:
    """HF's greedy continuation (`model.generate`, its own forward and KV cache), up to eos."""
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = engine.runner.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                           do_sample=False)
    tokens = out[0, len(prompt):].tolist()
    return tokens[: tokens.index(EOS)] if EOS in tokens else tokens


def _text(engine, tokens: list[int]) -> str:
    return engine.tokenizer.decode(tokens, skip_special_tokens=True)


def _watch_passes(engine) -> list[tuple[int, int, int]]:
    """Record each forward pass as (step, rows, live sequences), checking during every pass
    that each row's block table is a live sequence's own, padded with the null block."""
    passes = []
    forward = engine.runner.forward_spans  # every pass goes through it

    def watched(batch, spans):
        width = batch.tables.shape[1]
        owned = [engine.blocks.table(s.job)[:width] for s in engine.seqs.values()]
        for row in batch.tables.tolist():
            used = [b for b in row if b != NULL_BLOCK]
            assert row == used + [NULL_BLOCK] * (width - len(used)) and used in owned, f"table {row} is no one's"
        passes.append((engine.steps, batch.tokens.shape[0], len(engine.seqs)))
        return forward(batch, spans)

    engine.runner.forward_spans = watched
    return passes


# -- greedy decoding equals the model's own ----------------------------------------------------------
def test_greedy_decoding_equals_hf_generate(engine):
    prompt = _prompt(20, seed=1)
    job = _job(1, prompt, max_tokens=24)
    _run(engine, [job])
    assert job.token_ids == _reference(engine, prompt, 24)
    assert job.finish_reason == "length" and job.text == _text(engine, job.token_ids)


def test_statistics_count_steps_and_tokens(engine):
    job = _job(1, _prompt(20, seed=1), max_tokens=5)
    _run(engine, [job])
    # two prefill chunks (16 + 4 tokens, the second yields the first token), then 4 decodes
    # 1 MiB of KV memory at 512 bytes a token: 128 blocks of 16 tokens, the null block aside;
    # 24 tokens computed: one full block stays cached, the other is free again
    assert engine.statistics() == {"sequences": 0, "steps": 2 + 4 + 1, "tokens_computed": 20 + 4,
                                   "tokens_generated": 5, "kv_bytes_per_token": 512, "kv_blocks": 127,
                                   "kv_blocks_free": 126, "kv_blocks_cached": 1, "kv_blocks_held": 0,
                                   "prefix_hit_tokens": 0, "prefix_miss_tokens": 20}


def test_jobs_batched_together_decode_as_if_alone(engine):
    """Prompts of 1 to 75 tokens, two of them joining while the others decode, prefilled in
    16-token chunks beside the running decodes: every job still equals its reference."""
    lengths, max_tokens = (1, 17, 40, 75), (20, 12, 25, 16)
    jobs = [_job(i, _prompt(n, seed=10 + i), max_tokens=m) for i, (n, m) in enumerate(zip(lengths, max_tokens))]
    passes, pieces = _watch_passes(engine), []
    _steps(engine, jobs[:2], 3, pieces)
    _run(engine, jobs, pieces)
    for job in jobs:
        assert job.token_ids == _reference(engine, job.prompt_ids, job.sampling.max_tokens)
        assert "".join(piece for owner, piece in pieces if owner is job) == job.text
    steps = [s for s, *_ in passes]
    assert any(steps.count(s) == 2 for s in steps)  # decodes and a prefill chunk shared steps
    assert max(live for *_, live in passes) == 4


@pytest.mark.parametrize("kernel", [True, False], ids=["paged-kernel", "gather"])
def test_decoding_with_the_kernel_or_by_gathering_blocks_equals_hf_generate(kernel):
    """The compiled paged-attention kernel reads blocks in place; without it, the rows'
    blocks are gathered for sdpa: a batch of prompts of 1 to 75 tokens decodes the same."""
    engine = tiny_engine()
    if kernel and engine.runner.paged_decode is None:
        pytest.skip("the paged-attention kernel could not be built here")
    calls = []
    if kernel:
        decode = engine.runner.paged_decode
        engine.runner.paged_decode = lambda *args: calls.append(1) or decode(*args)
    else:
        engine.runner.paged_decode = None
    lengths, max_tokens = (1, 2, 15, 16, 17, 33, 40, 75), (20, 18, 12, 25, 16, 9, 14, 10)
    jobs = [_job(i, _prompt(n, seed=100 + i), max_tokens=m) for i, (n, m) in enumerate(zip(lengths, max_tokens))]
    _run(engine, jobs[:4])
    _steps(engine, jobs[4:], 2)
    _run(engine, jobs[4:])
    for job in jobs:
        assert job.token_ids == _reference(engine, job.prompt_ids, job.sampling.max_tokens), len(job.prompt_ids)
    assert bool(calls) == kernel


def test_a_prompt_filling_the_context_ends_with_length(engine):
    prompt = _prompt(engine.context_length - 7, seed=3)
    job = _job(1, prompt, max_tokens=50)
    _run(engine, [job])
    assert job.finish_reason == "length" and len(job.token_ids) == 7
    assert job.token_ids == _reference(engine, prompt, 7)


# -- the prefix tree -------------------------------------------------------------------------------
def test_a_shared_prefix_is_reused_not_recomputed(engine):
    base = _prompt(70, seed=4)
    first = _job(1, base + [5, 6, 7], max_tokens=6)
    _run(engine, [first])
    assert engine.statistics()["kv_blocks_cached"] == (73 + 5) // BLOCK  # what it computed, in full blocks
    before = engine.statistics()
    second = _job(2, base[:2 * BLOCK] + _prompt(10, seed=5), max_tokens=6)  # shares two blocks
    _run(engine, [second])
    after = engine.statistics()
    assert after["prefix_hit_tokens"] - before["prefix_hit_tokens"] == 2 * BLOCK
    assert after["prefix_miss_tokens"] - before["prefix_miss_tokens"] == 10
    assert after["tokens_computed"] - before["tokens_computed"] == 10 + 5  # its own tail, then 5 decodes
    assert second.token_ids == _reference(engine, second.prompt_ids, 6)


def test_running_jobs_share_prefix_blocks_by_reference(engine):
    base = _prompt(40, seed=14)
    first = _job(1, base + [5, 6, 7], max_tokens=8)
    _steps(engine, [first], 2)  # 32 of its prompt tokens: two full blocks, offered to the others at once
    second = _job(2, base[:2 * BLOCK] + _prompt(9, seed=15), max_tokens=8)
    _steps(engine, [first, second], 1)
    shared = engine.blocks.table(first)[:2]
    assert engine.blocks.table(second)[:2] == shared and engine.blocks.cached_tokens(second) == 2 * BLOCK
    assert engine.statistics()["kv_blocks_held"] == len(engine.blocks.table(first)) + len(engine.blocks.table(second)) - 2
    _run(engine, [first, second])
    assert set(shared) <= set(engine.blocks._cached)  # let go by both: cached, not freed
    assert engine.statistics()["kv_blocks_held"] == 0
    assert first.token_ids == _reference(engine, first.prompt_ids, 8)
    assert second.token_ids == _reference(engine, second.prompt_ids, 8)


@pytest.mark.parametrize("length, hits", [(2 * BLOCK + 1, 2 * BLOCK), (2 * BLOCK, BLOCK)])
def test_a_cached_prompt_recomputes_only_what_follows_its_last_full_block(engine, length, hits):
    """The last token's logits are needed, so at least it is computed again: a prompt of
    whole blocks recomputes its last block."""
    prompt = _prompt(length, seed=6)
    first = _job(1, prompt, max_tokens=4)
    _run(engine, [first])
    before = engine.statistics()
    again = _job(2, prompt, max_tokens=4)
    _run(engine, [again])
    after = engine.statistics()
    assert after["prefix_hit_tokens"] - before["prefix_hit_tokens"] == hits
    assert after["tokens_computed"] - before["tokens_computed"] == length - hits + 3
    assert again.token_ids == first.token_ids == _reference(engine, prompt, 4)


def test_a_cached_prompt_s_last_token_is_fed_in_a_prompt_pass_with_the_prompt_s_weights(engine):
    """Alone after its cached prefix, a prompt's last token is not fed beside the decodes: it
    goes in a prompt pass told the prompt's length, which picks the weights (dense or which
    quantized kind) the prompt's own pass had, so the reply does not depend on the cache."""
    prompt = _prompt(2 * BLOCK + 1, seed=6)
    first = _job(1, prompt, max_tokens=4)
    _run(engine, [first])
    decoding = _job(2, _prompt(5, seed=7), max_tokens=8)
    engine.step([decoding], lambda pieces: None)  # its prompt in: it decodes from now on
    passes = []
    forward = engine.runner.forward_spans
    engine.runner.forward_spans = lambda batch, spans: passes.append(batch) or forward(batch, spans)
    again = _job(3, prompt, max_tokens=4)
    engine.step([decoding, again], lambda pieces: None)
    assert [(tuple(b.tokens.shape), b.weight_rows) for b in passes] == [((1, 1), 0), ((1, 1), 2 * BLOCK + 1)]
    _run(engine, [decoding, again])
    assert again.token_ids == first.token_ids


def test_the_least_recently_used_prefix_is_evicted_and_recomputed_identically(engine):
    engine.blocks = BlockManager(4)  # three blocks: a running job holds two, one full block stays cached
    a, b, c = (_prompt(20, seed=s) for s in (7, 8, 9))  # one full block each

    def run(job_id, prompt):
        hits = engine.statistics()["prefix_hit_tokens"]
        job = _job(job_id, prompt, max_tokens=4)
        _run(engine, [job])
        return job.token_ids, engine.statistics()["prefix_hit_tokens"] - hits

    first_a, _ = run(1, a)
    first_b, _ = run(2, b)
    assert engine.statistics()["kv_blocks_cached"] == 2
    assert run(3, a) == (first_a, BLOCK)  # a is now the most recently used
    run(4, c)  # evicts b
    assert engine.statistics()["kv_blocks_cached"] == 2
    assert run(5, a)[1] == BLOCK
    assert run(6, b) == (first_b, 0)  # recomputed, to the same tokens
    assert first_b == _reference(engine, b, 4)


def test_no_prefix_caching_recomputes_everything():
    engine = tiny_engine(EngineConfig(max_batch=4, prefill_chunk=16, kv_cache_mb=1, prefix_caching=False))
    prompt = _prompt(70, seed=4)
    for job_id in (1, 2):
        job = _job(job_id, prompt, max_tokens=4)
        _run(engine, [job])
        assert job.token_ids == _reference(engine, prompt, 4)
    stats = engine.statistics()
    assert stats["kv_blocks_cached"] == stats["prefix_hit_tokens"] == 0
    assert stats["kv_blocks_free"] == stats["kv_blocks"] and stats["prefix_miss_tokens"] == 2 * 70


# -- KV blocks -------------------------------------------------------------------------------------
def test_finished_jobs_release_their_blocks_and_at_most_max_batch_run():
    engine = tiny_engine(EngineConfig(max_batch=3, prefill_chunk=16, kv_cache_mb=1))
    passes = _watch_passes(engine)
    specs = [(5, 3), (20, 14), (40, 6), (9, 10), (33, 4), (50, 8)]  # (prompt length, max_tokens)
    queue = [_job(i, _prompt(n, seed=20 + i), max_tokens=m) for i, (n, m) in enumerate(specs)]
    jobs, running, peak = list(queue), [], 0
    while queue or running:  # as the kernel's scheduler: at most max_batch at once, refilled as jobs end
        running = [j for j in running if not j.finished]
        while queue and len(running) < 3:
            running.append(queue.pop(0))
        if running:
            engine.step(running, lambda batch: None)
            live = [j for j in running if not j.finished]
            assert set(engine.seqs) == {j.id for j in live}  # finished: let go at once
            assert all(not engine.blocks.holds(j) for j in running if j.finished)
            assert engine.statistics()["kv_blocks_held"] == sum(engine.blocks.blocks_held(j) for j in live)
            peak = max(peak, len(engine.seqs))
    assert peak == 3 and not engine.seqs and max(rows for _, rows, _ in passes) <= 3
    stats = engine.statistics()
    assert stats["kv_blocks_held"] == 0 and stats["kv_blocks_free"] + stats["kv_blocks_cached"] == stats["kv_blocks"]
    for job in jobs:
        assert job.token_ids == _reference(engine, job.prompt_ids, job.sampling.max_tokens)


def test_an_engine_driven_past_its_kv_memory_refuses():
    engine = tiny_engine()
    engine.blocks = BlockManager(4)  # three blocks of 16 tokens
    grows = _job(1, _prompt(40, seed=25), max_tokens=20)
    _steps(engine, [grows], 3 + 8)  # the prompt, then decodes up to 48 tokens: three blocks
    assert engine.blocks.blocks_held(grows) == 3 and len(grows.token_ids) == 9
    with pytest.raises(RuntimeError, match="KV memory is full"):
        _steps(engine, [grows], 1)  # a fourth block is needed
    engine.step([], lambda batch: None)
    assert engine.statistics()["kv_blocks_held"] == 0
    one, two = _job(2, _prompt(30, seed=26), max_tokens=4), _job(3, _prompt(30, seed=27), max_tokens=4)
    with pytest.raises(RuntimeError, match="KV memory is full"):
        engine.step([one, two], lambda batch: None)  # two blocks each


def test_admitting_more_jobs_than_slots_is_refused():
    engine = tiny_engine(EngineConfig(max_batch=2, prefill_chunk=16, kv_cache_mb=1))
    jobs = [_job(i, _prompt(5, seed=i), max_tokens=4) for i in range(3)]
    with pytest.raises(RuntimeError, match="2 sequences"):
        engine.step(jobs, lambda batch: None)


def test_a_cancelled_job_is_dropped_and_the_others_go_on(engine):
    keep, cancel = _job(1, _prompt(12, seed=30), max_tokens=10), _job(2, _prompt(25, seed=31), max_tokens=10)
    never = _job(3, _prompt(8, seed=32), max_tokens=10)
    never.cancelled = True
    _steps(engine, [keep, cancel, never], 3)
    assert never.finish_reason == "cancelled" and not never.token_ids and 3 not in engine.seqs
    generated = list(cancel.token_ids)
    assert generated  # it was decoding
    cancel.cancelled = True
    _steps(engine, [keep, cancel], 1)
    assert cancel.finish_reason == "cancelled" and cancel.token_ids == generated
    assert set(engine.seqs) == {1}
    _run(engine, [keep])
    assert keep.token_ids == _reference(engine, keep.prompt_ids, 10)


# -- preemption -------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_a_preempted_job_resumes_where_it_stopped(prefix_caching):
    engine = tiny_engine(EngineConfig(max_batch=4, prefill_chunk=16, kv_cache_mb=1, prefix_caching=prefix_caching))
    job = _job(1, _prompt(40, seed=40), max_tokens=30)
    _steps(engine, [job], 10)  # the prompt in 3 chunks (the last samples a token), 7 decodes: 47 computed
    done = list(job.token_ids)
    other = _job(2, _prompt(20, seed=41), max_tokens=8)
    _steps(engine, [other], 4)  # the job is out: its two full blocks stay cached
    assert set(engine.seqs) == {2} and job.token_ids == done and not engine.blocks.holds(job)
    assert engine.statistics()["kv_blocks_cached"] == (2 if prefix_caching else 0)
    hits = engine.statistics()["prefix_hit_tokens"]
    _run(engine, [job, other])
    assert job.token_ids == _reference(engine, job.prompt_ids, 30)
    assert other.token_ids == _reference(engine, other.prompt_ids, 8)
    assert engine.statistics()["prefix_hit_tokens"] - hits == (2 * BLOCK if prefix_caching else 0)  # resumed from its blocks


def test_a_job_preempted_mid_prefill_resumes(engine):
    job = _job(1, _prompt(75, seed=42), max_tokens=10)
    _steps(engine, [job], 2)  # 32 of its 75 prompt tokens
    assert not job.token_ids
    engine.step([], lambda batch: None)
    assert not engine.seqs and engine.statistics()["kv_blocks_cached"] == 2
    _run(engine, [job])
    assert job.token_ids == _reference(engine, job.prompt_ids, 10)
    assert engine.statistics()["prefix_hit_tokens"] == 2 * BLOCK


# -- sampling ---------------------------------------------------------------------------------------
def _draws(logits, temperature, top_p, n, seed=0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [sample_top_p(logits, temperature, top_p, generator) for _ in range(n)]


def _frequencies(draws: list[int], size: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(draws), minlength=size).float() / len(draws)


def test_a_small_top_p_keeps_only_the_argmax():
    logits = torch.tensor([0.5, 2.0, 1.9, -1.0, 0.0])
    assert set(_draws(logits, 5.0, 0.01, 200)) == {1}


def test_top_p_samples_the_nucleus_in_proportion():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    draws = _draws(logits, 1.0, 0.7, 4000)  # nucleus: the first two (0.5 + 0.3 reaches 0.7)
    assert set(draws) == {0, 1}
    assert abs(_frequencies(draws, 4)[0].item() - 0.5 / 0.8) < 0.03


def test_top_p_one_samples_every_token_by_its_probability():
    logits = torch.linspace(0.0, 2.0, 8)
    draws = _draws(logits, 1.0, 1.0, 4000)
    assert set(draws) == set(range(8))
    assert torch.allclose(_frequencies(draws, 8), torch.softmax(logits, -1), atol=0.03)


def test_temperature_sharpens_or_flattens_the_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0])
    seen = {t: _frequencies(_draws(logits, t, 1.0, 3000), 3) for t in (0.25, 1.0, 4.0)}
    for temperature, frequencies in seen.items():
        assert torch.allclose(frequencies, torch.softmax(logits / temperature, -1), atol=0.03)
    assert seen[0.25][0] > 0.95 and seen[4.0][0] < 0.5


def test_the_same_seed_draws_the_same_sequence():
    logits = torch.zeros(50)
    assert _draws(logits, 1.0, 1.0, 100, seed=3) == _draws(logits, 1.0, 1.0, 100, seed=3)
    assert _draws(logits, 1.0, 1.0, 100, seed=3) != _draws(logits, 1.0, 1.0, 100, seed=4)


def test_a_seeded_sampling_job_is_reproducible_batched_and_preempted(engine):
    prompt = _prompt(30, seed=50)
    alone = _job(1, prompt, max_tokens=20, temperature=1.0, top_p=0.9, seed=7)
    _run(engine, [alone])
    other_engine = tiny_engine()
    greedy = _job(2, _prompt(12, seed=51), max_tokens=20)
    again = _job(3, prompt, max_tokens=20, temperature=1.0, top_p=0.9, seed=7)
    _steps(other_engine, [greedy, again], 6)
    _steps(other_engine, [greedy], 3)  # `again` is preempted for a while
    _run(other_engine, [greedy, again])
    assert again.token_ids == alone.token_ids
    assert greedy.token_ids == _reference(engine, greedy.prompt_ids, 20)
    reseeded = _job(4, prompt, max_tokens=20, temperature=1.0, top_p=0.9, seed=8)
    _run(engine, [reseeded])
    assert reseeded.token_ids != alone.token_ids
    assert alone.token_ids != _reference(engine, prompt, 20)  # it did sample


# -- stop conditions --------------------------------------------------------------------------------
def test_max_tokens_ends_with_length(engine):
    job = _job(1, _prompt(10, seed=60), max_tokens=5)
    _run(engine, [job])
    assert job.finish_reason == "length" and len(job.token_ids) == 5


def test_an_eos_token_ends_with_stop_and_is_not_kept(engine):
    prompt = _prompt(10, seed=61)
    expected = _reference(engine, prompt, 20)
    k = next(i for i in range(3, 20) if expected[i] not in expected[:i])
    engine = tiny_engine(eos_ids=frozenset({expected[k]}))
    job = _job(1, prompt, max_tokens=20)
    _run(engine, [job])
    assert job.finish_reason == "stop" and job.token_ids == expected[:k]
    assert engine.statistics()["tokens_generated"] == k


def test_a_stop_string_cuts_the_reply_and_the_stream(engine):
    prompt = _prompt(10, seed=62)
    full = _text(engine, _reference(engine, prompt, 40))
    start = next(i for i in range(3, len(full)) if full[i:i + 2].isascii() and full[i:i + 2].isprintable())
    stop = full[start:start + 2]
    job = _job(1, prompt, max_tokens=40, stop=(stop,))
    pieces = _run(engine, [job])
    assert job.finish_reason == "stop" and len(job.token_ids) < 40
    assert job.text == full[: full.index(stop)]
    assert "".join(p for _, p in pieces) == job.text


# -- constrained decoding ---------------------------------------------------------------------------
def test_constrained_and_free_jobs_share_a_batch(engine):
    constrained = _job(1, _prompt(8, seed=70), max_tokens=60, json_schema=COLORS)
    sampled = _job(2, _prompt(20, seed=71), max_tokens=60, json_schema=COLORS, temperature=1.0, seed=1)
    free = _job(3, _prompt(15, seed=72), max_tokens=20)
    for job in (constrained, sampled):
        engine.init_state(job)  # as the driver's prepare does
    _run(engine, [constrained, sampled, free])
    for job in (constrained, sampled):
        data = json.loads(job.text)
        assert job.finish_reason == "stop" and set(data) == {"colors", "ok"}
        assert 2 <= len(data["colors"]) <= 3 and set(data["colors"]) <= {"red", "green", "blue"}
    assert free.token_ids == _reference(engine, free.prompt_ids, 20)


def test_grammar_state_survives_preemption(engine):
    prompt = _prompt(8, seed=73)
    whole = _job(1, prompt, max_tokens=60, json_schema=COLORS)
    engine.init_state(whole)
    _run(engine, [whole])
    split = _job(2, prompt, max_tokens=60, json_schema=COLORS)
    engine.init_state(split)
    _steps(engine, [split], 6)
    engine.step([], lambda batch: None)  # preempted mid-object
    assert split.token_ids and not split.finished
    _run(engine, [split])
    assert split.text == whole.text and json.loads(split.text)


# -- defects these tests found (fixed) ----------------------------------------------------------------
def test_text_held_back_for_a_stop_string_is_streamed_after_a_preemption(engine):
    prompt = _prompt(12, seed=82)
    probe = _job(1, prompt, max_tokens=30)
    texts = []
    while not probe.finished:
        engine.step([probe], lambda batch: None)
        texts.append(probe.text)
    engine.step([], lambda batch: None)
    k = next(i for i, t in enumerate(texts) if len(t) > 2 and t[-2:].isascii() and t[-2:].isprintable())
    stop = texts[k][-2:] + "\x00"  # never completed, but its start is held back at step k
    assert "\x00" not in probe.text
    job = _job(2, prompt, max_tokens=30, stop=(stop,))
    pieces = []
    _steps(engine, [job], k + 1, pieces)
    engine.step([], pieces.extend)  # preempted while holding back two characters
    _run(engine, [job], pieces)
    assert job.text == probe.text
    assert "".join(p for _, p in pieces) == job.text


def test_an_unseeded_sampler_leaves_the_global_rng_alone(engine):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expected = torch.rand(3)
        torch.manual_seed(0)
        engine.init_state(_job(1, [1, 2, 3], temperature=1.0))
        assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kernel", [True, False], ids=["paged-kernel", "gather"])
def test_never_written_cache_positions_do_not_reach_the_outputs(engine, kernel):
    if not kernel:
        engine.runner.paged_decode = None
    # what reused heap (or CUDA caching-allocator) memory may hold; the null block is zeroed
    # once, when the pool is made
    engine.cache.k[:, NULL_BLOCK + 1:].fill_(float("nan"))
    engine.cache.v[:, NULL_BLOCK + 1:].fill_(float("nan"))
    short, long = _job(1, _prompt(5, seed=90), max_tokens=6), _job(2, _prompt(9, seed=91), max_tokens=6)
    _run(engine, [short, long])
    assert long.token_ids == _reference(engine, long.prompt_ids, 6)  # the longest row sees no unwritten key
    assert short.token_ids == _reference(engine, short.prompt_ids, 6)


# -- scoring options (the `choose` syscall) ------------------------------------------------------------
def _scoring(job_id: int, prompt_ids: list[int], options: list[list[int]]) -> GenerationJob:
    job = _job(job_id, prompt_ids, max_tokens=max(map(len, options)))
    job.options, job.option_ids = tuple(f"o{i}" for i in range(len(options))), [list(o) for o in options]
    return job


def _reference_logprobs(engine, prompt: list[int], option: list[int]) -> list[float]:
    """log P(each option token | the prompt and the option's tokens before it), by HF's forward."""
    ids = torch.tensor([prompt + option])
    with torch.inference_mode():
        logits = engine.runner.model(ids).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(option)]


OPTIONS = [[7], [40, 41, 42], [99, 3], [7, 8]]  # one token, several, sharing a first token


def test_scored_options_are_the_model_s_own_log_probabilities(engine):
    prompt = _prompt(37, seed=120)
    job = _scoring(1, prompt, OPTIONS)
    _run(engine, [job])
    assert job.finish_reason == "stop" and job.token_ids == [] and job.text == ""
    for option, got in zip(OPTIONS, job.option_logprobs, strict=True):
        assert got == pytest.approx(_reference_logprobs(engine, prompt, option), abs=1e-4)
    # the prompt once, then one pass for the options of several tokens, side by side
    assert engine.statistics()["tokens_computed"] == len(prompt) + sum(len(o) - 1 for o in OPTIONS)
    assert engine.statistics()["steps"] == 3 + 1 + 1  # the prompt (16-token chunks), the options, the release


def test_scoring_runs_beside_generation_without_changing_it(engine):
    prompt, other = _prompt(20, seed=121), _prompt(9, seed=122)
    reference = _reference(engine, other, 12)
    alone = _scoring(1, prompt, OPTIONS)
    _run(engine, [alone])
    scored, generated = _scoring(2, prompt, OPTIONS), _job(3, other, max_tokens=12)
    _run(engine, [scored, generated])
    assert generated.token_ids == reference
    for a, b in zip(alone.option_logprobs, scored.option_logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_a_scoring_job_preempted_before_its_options_pass_resumes_where_it_was(engine):
    prompt = _prompt(40, seed=123)
    split = _scoring(2, prompt, OPTIONS)
    _steps(engine, [split], 3)  # the prompt, in 16-token chunks: its first tokens are scored
    engine.step([], lambda pieces: None)  # preempted before the pass of the longer options
    assert not split.finished and split.driver_state.pending == [1, 2, 3]
    _run(engine, [split])
    for option, got in zip(OPTIONS, split.option_logprobs, strict=True):
        assert got == pytest.approx(_reference_logprobs(engine, prompt, option), abs=1e-4)


def test_a_cancelled_scoring_job_ends_cancelled(engine):
    job = _scoring(1, _prompt(30, seed=124), OPTIONS)
    _steps(engine, [job], 1)
    job.cancelled = True
    _run(engine, [job])
    assert job.finish_reason == "cancelled" and not engine.seqs


# -- bursts: several steps of one batch back to back (Engine.burst) -------------------------------------
@pytest.fixture
def endless():
    """A tiny engine that never samples eos: only max_tokens, a cancel or the burst ends a job."""
    return tiny_engine(eos_ids=frozenset())


def test_a_burst_is_the_steps_it_runs_and_stops_at_its_length(endless):
    engine, stepped = endless, tiny_engine(eos_ids=frozenset())
    alone, burst = _job(1, _prompt(20, seed=60), max_tokens=30), _job(1, _prompt(20, seed=60), max_tokens=30)
    _steps(stepped, [alone], 8)
    pieces = []
    assert engine.burst([burst], pieces.extend, lambda: True, 8) == 8
    assert burst.token_ids == alone.token_ids and len(burst.token_ids) == 7  # the 2nd prefill pass gives one
    assert "".join(piece for _, piece in pieces) == _text(engine, burst.token_ids)
    assert engine.steps == 8


def test_a_burst_stops_after_the_step_that_ends_a_job(endless):
    engine = endless
    short, long = _job(1, _prompt(10, seed=61), max_tokens=3), _job(2, _prompt(12, seed=62), max_tokens=30)
    assert engine.burst([short, long], lambda pieces: None, lambda: True, 16) == 3  # prompt pass + 2 more tokens
    assert short.finish_reason == "length" and len(short.token_ids) == 3 and not long.finished
    long.cancelled = True
    assert engine.burst([long], lambda pieces: None, lambda: True, 16) == 1
    assert long.finish_reason == "cancelled" and not engine.seqs


def test_a_burst_stops_when_told_or_before_a_step_that_finds_no_kv_block(endless):
    engine = endless
    job = _job(1, _prompt(12, seed=63), max_tokens=30)
    asked = []

    def go_on() -> bool:
        asked.append(len(job.token_ids))
        return len(asked) < 3

    assert engine.burst([job], lambda pieces: None, go_on, 16) == 3 and asked == [1, 2, 3]
    engine.step([], lambda pieces: None)
    engine.blocks = BlockManager(3)  # two blocks of 16 tokens
    grows = _job(2, _prompt(20, seed=64), max_tokens=30)
    steps = engine.burst([grows], lambda pieces: None, lambda: True, 30)
    # 32 positions computed; feeding its last token would need a 33rd: it stopped rather than fail.
    assert len(grows.prompt_ids) + len(grows.token_ids) == 33 and steps == 2 + 12
    assert not grows.finished and engine.blocks.blocks_held(grows) == 2
