"""Weight-only quantization (drivers/quant.py) and the engine's quantized projections
(drivers/llama.py `Projection`): the kernels compute what the quantized weights say, the
choice is measured and honest, decode uses them and prefill does not, and on the real
model a quantized engine still answers right."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import llmos
from llmos.drivers import paged, quant
from llmos.drivers.llama import Projection
from llmos.drivers.quant import Choice
from llmos.kernel.errors import ConfigError
from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams
from llmos.testing import assert_prefix_cache_blind, pinned_while, prefix_cache_prompts, threads_cpus, torch_threads

KINDS = [kind for kind in ("int8", "int4") if quant.available(kind)]


def weight(rows: int = 256, cols: int = 128) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)) * 0.05


@pytest.mark.parametrize("kind", KINDS)
def test_a_quantized_product_is_the_product_with_the_weights_it_keeps(kind):
    w, x = weight(), torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    got = quant.quantize(w, kind)(x.to(torch.bfloat16)).float()
    kept = quant.dequantized(w, kind).float()
    assert torch.allclose(got, x.to(torch.bfloat16).float() @ kept.T, atol=3e-2, rtol=2e-2)
    error = (kept - w).abs().max().item()
    assert error <= (0.05 * 5 / (127 if kind == "int8" else 7.5))  # about half a step of the scale
    assert quant.quantize(w, kind).nbytes < w.numel() * (2 if kind == "int8" else 1)  # a half or a quarter of bf16


def won_to(limit: int, slow: dict[int, float], fast: dict[int, float], needed: float) -> bool:
    """Whether `fast` beat `slow` by `needed` at the first size and never lost at two sizes in a
    row up to `limit` (a lone loss between wins is the host's noise: `won_up_to`)."""
    won = [slow[rows] >= needed * fast[rows] for rows in quant.TRIAL_ROWS if rows <= limit]
    return won[0] and not any(not a and not b for a, b in zip(won, won[1:]))


def test_the_measured_choice_names_a_kind_and_a_row_limit_it_measured():
    gate_up, down = weight(3072, 576), weight(576, 1536)
    choice = quant.measure([gate_up, down], lambda w: lambda x: F.linear(x, w), tuple(KINDS), torch.float32,
                           repeats=2, seconds=0)
    assert choice.kind in quant.QUANTS and {"none", *KINDS} <= set(choice.measured)
    assert (choice.kind == "none") == (choice.max_rows == 0)
    if choice.kind != "none":  # it won up to its limit, and at the limit itself
        dense, kernel = choice.measured["none"], choice.measured[choice.kind]
        assert won_to(choice.max_rows, dense, kernel, quant.SPEEDUP_NEEDED)
        assert dense[choice.max_rows] >= quant.SPEEDUP_NEEDED * kernel[choice.max_rows]
    if choice.few != "none":  # and the few rows' kind beat it, in the same race, up to its own
        assert choice.few != choice.kind and 0 < choice.few_rows <= choice.max_rows
        assert won_to(choice.few_rows, choice.measured[choice.kind], choice.measured[choice.few],
                      quant.FEW_SPEEDUP_NEEDED)


def test_the_row_limit_is_the_last_size_won_before_the_kernel_loses_twice_in_a_row():
    def kernel(x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)
        return x

    def dense_losing_past(last: int, noisy: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
        def dense(x: torch.Tensor) -> torch.Tensor:  # three times slower up to `last` rows, instant past them
            if x.shape[0] <= last and x.shape[0] != noisy:
                time.sleep(0.006)
            return x
        return dense

    limit, raced = quant.row_limit(kernel, dense_losing_past(8), 16, torch.float32, repeats=1, seconds=0)
    assert limit == 8
    assert list(raced["small"]) == list(raced["dense"]) == [1, 2, 4, 8, 16, 32]  # stopped at a second loss in a row
    # A lone loss between wins (the host's noise) does not end it.
    assert quant.row_limit(kernel, dense_losing_past(16, noisy=4), 16, torch.float32, repeats=1, seconds=0)[0] == 16
    limit, raced = quant.row_limit(kernel, lambda x: x, 16, torch.float32, repeats=1, seconds=0)
    assert limit == 0 and list(raced["small"]) == [1]  # no win at one row: not tried further


def test_projections_are_measured_once_per_weight_shape_and_keep_their_floor():
    linears = [nn.Linear(128, 256, bias=False) for _ in range(2)]
    projections = [Projection([linear], pack=False, choice=Choice("int8", 2, {})) for linear in linears]
    measured: dict[tuple[str, int, int], int] = {}
    projections[0].limit_rows(measured, torch.float32, floor=0)
    assert list(measured) == [("int8", 256, 128)] and projections[0].max_rows == measured[("int8", 256, 128)]
    measured[("int8", 256, 128)] = 0  # as if it lost at one row: the second reads it, floored
    projections[1].limit_rows(measured, torch.float32, floor=1)
    assert projections[1].max_rows == 1
    unquantized = Projection([linears[0]], pack=False)
    unquantized.limit_rows(measured, torch.float32, floor=1)
    assert unquantized.max_rows == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_projection_uses_the_quantized_weights_for_few_rows_and_dense_ones_for_many(kind):
    w = weight()
    linear = nn.Linear(128, 256, bias=True)
    linear.weight = nn.Parameter(w, requires_grad=False)
    projection = Projection([linear], pack=False, choice=Choice(kind, 2, {}))
    kept = quant.dequantized(w, kind).float()
    few, many = torch.randn(1, 2, 128), torch.randn(1, 9, 128)
    expected_few = few.to(torch.bfloat16).float() @ kept.T + linear.bias
    assert torch.allclose(projection(few), expected_few, atol=5e-2, rtol=2e-2)
    assert torch.equal(projection(many), linear(many))  # past max_rows: the dense weights, exactly


@pytest.mark.parametrize("kind", KINDS)
def test_a_projection_told_the_pass_s_rows_serves_them_with_that_pass_s_weights(kind):
    """A prompt's tail after its cached prefix is a pass of a few rows, computed with the weights
    of the prompt's own pass (`rows`): dense past the quantized kind's limit."""
    w = weight()
    linear = nn.Linear(128, 256, bias=False)
    linear.weight = nn.Parameter(w, requires_grad=False)
    projection = Projection([linear], pack=False, choice=Choice(kind, 2, {}))
    prompt = torch.randn(1, 40, 128)
    tail = prompt[:, -2:]
    assert torch.equal(projection(tail, 2), quant.quantize(w, kind)(tail.reshape(2, 128)).view(1, 2, 256))
    assert torch.equal(projection(tail, 40), linear(prompt)[:, -2:])


@pytest.mark.skipif(KINDS != ["int8", "int4"], reason="needs both kinds")
def test_a_projection_serves_few_rows_in_one_kind_then_more_in_another_then_dense():
    w = weight()
    linear = nn.Linear(128, 256, bias=False)
    linear.weight = nn.Parameter(w, requires_grad=False)
    choice = Choice("int8", 4, {}, few="int4", few_rows=1)
    assert choice.describe() == "int4 up to 1 rows, then int8 (decode batches up to 4 rows)"
    projection = Projection([linear], pack=False, choice=choice)
    one, three, nine = (torch.randn(rows, 128) for rows in (1, 3, 9))
    assert torch.equal(projection(one), quant.quantize(w, "int4")(one))
    assert torch.equal(projection(three), quant.quantize(w, "int8")(three))
    assert torch.equal(projection(nine), linear(nine))


def test_pack_int4_puts_codes_l_16_plus_l_32_plus_l_48_plus_l_in_word_l():
    codes = (torch.arange(64) % 16).view(1, 2, 32).float()  # two groups of 32: one block of 64
    packed = quant.pack_int4(codes)
    assert packed.shape == (1, 32) and packed.dtype == torch.uint8
    words = packed.view(torch.int16).int() & 0xFFFF
    for word in range(16):
        nibbles = [(int(words[0, word]) >> (4 * i)) & 0xF for i in range(4)]
        assert nibbles == [(word + 16 * i) % 16 for i in range(4)]


def test_a_weight_from_memory_cycles_through_copies_that_fill_more_than_a_cache():
    made = quant.quantize(weight(), "int8")
    then = quant.quantize(weight(64, 96), "int8")  # takes the first 96 of made's 256 outputs
    call = quant.FromMemory(lambda: [quant.quantized_link(made), quant.quantized_link(then)])
    x = torch.randn(2, 128)
    assert all(torch.equal(call(x), then(made(x)[:, :96].contiguous())) for _ in range(3))
    assert len(call.copies) * (made.nbytes + then.nbytes) >= quant.COLD_BYTES
    memories = {link.matmul.data.data_ptr() for chain in call.copies for link in chain}  # each copy its own
    assert len(memories) == 2 * len(call.copies)
    w = weight(64, 96)
    dense = quant.FromMemory(lambda: [quant.dense_link(w, lambda copy: lambda x: F.linear(x, copy))])
    assert torch.equal(dense(x[:, :96]), F.linear(x[:, :96], w)) and len(dense.copies) * w.numel() * 4 >= quant.COLD_BYTES


def test_a_bad_quantization_is_a_config_error(monkeypatch):
    monkeypatch.setenv(quant.QUANT_ENV, "int3")
    with pytest.raises(ConfigError, match="int3"):
        quant.wanted_quantization()
    monkeypatch.setenv(quant.QUANT_ENV, "")
    assert quant.wanted_quantization() == "auto"
    with quant.requested_quantization("int4"):
        assert quant.wanted_quantization() == "int4"


def greedy(model: llmos.Model, question: str, tokens: int = 24) -> str:
    job = GenerationJob(id=1, pid=1, sampling=SamplingParams(max_tokens=tokens),
                        messages=(ChatMessage(role="user", content=question),))
    model.driver.prepare(job)
    while not job.finished:
        model.driver.engine.step([job], lambda pieces: None)
    model.driver.engine.step([], lambda pieces: None)
    return model.driver.tokenizer.decode(job.token_ids)


@pytest.mark.model
@pytest.mark.parametrize("kind", [*KINDS, "auto"])
def test_on_the_real_model_a_quantized_engine_still_answers(kind, session_llmos_home, monkeypatch):
    monkeypatch.setenv("LLMOS_HOME", str(session_llmos_home))
    model = llmos.load_model("smollm2", quant=kind)
    runner = model.driver.engine.runner
    if kind == "auto":  # whatever this machine measured: a kind, and a limit only with one
        assert runner.quantization.measured and (runner.quantization.kind == "none") == (runner.lm_head.small is None)
    else:  # the output projection in int8 beside int4 layers
        assert runner.quantization.kind == kind and runner.lm_head.small.kind == ("int8" if kind == "int4" else kind)
    quantized = [p.small for p in (*[part for layer in runner.layers for part in (layer.qkv, layer.o, layer.gate_up,
                                                                                 layer.down)], runner.lm_head)
                 if p.small is not None]
    # Read back from the cache, each starts on a 64-byte boundary (torch's int8 kernel needs it).
    assert all(q.data.data_ptr() % quant.ALIGNMENT == 0 for q in quantized)
    # int4 goes through the compiled int4_linear wherever it builds (AVX2, FMA and F16C).
    assert all(q.compiled == quant.compiled_int4() for q in quantized if q.kind == "int4")
    if kind == "int4" and quant.compiled_int4() and runner.stackable:  # AVX-512 builds too, since int4_linear is there
        assert runner._stack_for(1) is not None  # a one-agent decode pass runs every layer in one decode_layers call
    assert "Paris" in greedy(model, "What is the capital of France?")
    assert "4" in greedy(model, "What is 2+2?")
    # A prompt's tail after its cached prefix gets the weights of the prompt's own pass, not a
    # decode step's quantized ones: its reply does not depend on what the cache held.
    for prompt in prefix_cache_prompts(model.driver.tokenizer):
        assert_prefix_cache_blind(model.driver.engine, prompt)


@pytest.mark.model
@pytest.mark.skipif("int8" not in KINDS, reason="no int8 kernel in this PyTorch build")
def test_on_the_real_model_int8_in_float32_answers_through_the_compiled_kernel(session_llmos_home, monkeypatch):
    """The path of a CPU without AVX-512-bf16: float32 activations, int8 weights, and the
    compiled int8_linear wherever the operators build (PyTorch's kernel otherwise)."""
    monkeypatch.setenv("LLMOS_HOME", str(session_llmos_home))
    model = llmos.load_model("smollm2", dtype="float32", quant="int8")
    runner = model.driver.engine.runner
    quantized = [p.small for layer in runner.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    assert all(q is not None and q.compiled == (paged.kernel() is not None) for q in [*quantized, runner.lm_head.small])
    # On the fused path its K/V are kept in bfloat16 (half the bytes), read back as float32.
    assert runner.cache.k.dtype == (torch.bfloat16 if runner.fused is not None else torch.float32)
    assert "Paris" in greedy(model, "What is the capital of France?")
    assert "4" in greedy(model, "What is 2+2?")
    for prompt in prefix_cache_prompts(model.driver.tokenizer):  # float32 too: bitwise whether cached or not
        assert_prefix_cache_blind(model.driver.engine, prompt)


@pytest.mark.model
@pytest.mark.skipif("int4" not in KINDS or paged.kernel() is None, reason="no compiled int4 decode pass here")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: no team to place")
def test_on_the_real_model_a_pinned_thread_team_decodes_one_thread_s_reply(session_llmos_home, monkeypatch):
    """A one-agent decode pass runs on a thread team pinned apart (drivers/team.h): its reply
    is the one thread's, and every thread has its CPUs back after."""
    monkeypatch.setenv("LLMOS_HOME", str(session_llmos_home))
    model = llmos.load_model("smollm2", quant="int4")
    everywhere = os.sched_getaffinity(0)

    def reply(threads: int) -> str:
        # Each from a cold prefix cache: the team's bits are the question here, not the cache's.
        model.driver.engine.blocks.clear_cache()
        with torch_threads(threads):
            return greedy(model, "Write one sentence about the sea.", tokens=48)

    alone = reply(1)  # no team: every operator on this thread
    on_a_team: list[str] = []
    leader, looks = pinned_while(lambda: on_a_team.append(reply(2)))
    assert on_a_team == [alone]
    with_leader = [pinned for pinned in looks if leader in pinned]
    assert with_leader, "the leader was never seen on one CPU"
    assert all(cpu != pinned[leader] for pinned in with_leader for tid, cpu in pinned.items() if tid != leader)
    assert all(cpus == everywhere for cpus in threads_cpus().values())


@pytest.mark.model
def test_what_load_model_does_not_name_is_left_to_the_outer_request(session_llmos_home, monkeypatch):
    monkeypatch.setenv("LLMOS_HOME", str(session_llmos_home))
    monkeypatch.setenv(quant.QUANT_ENV, "int8")
    with quant.requested_quantization("none"):
        model = llmos.load_model("smollm2", dtype="float32")  # names the dtype only
    assert model.driver.engine.runner.quantization.kind == "none"
    assert model.driver.engine.runner.cache.k.dtype == torch.float32  # unquantized: K/V as HF keeps them
    assert llmos.load_model("smollm2", dtype="float32").driver.engine.runner.quantization.kind == "int8"


def test_racers_are_timed_in_turns_and_one_that_has_lost_is_not_timed_further():
    order: list[tuple[str, int]] = []

    def timed(name: str, seconds: Callable[[int], float]) -> Callable[[torch.Tensor], torch.Tensor]:
        def matmul(x: torch.Tensor) -> torch.Tensor:
            order.append((name, x.shape[0]))
            time.sleep(seconds(x.shape[0]))
            return x
        return matmul

    racers = {"none": timed("none", lambda rows: 0.004), "fast": timed("fast", lambda rows: 0.001),
              "slow": timed("slow", lambda rows: 0.004 if rows == 1 else 0.006)}
    times = quant.race(racers, 16, torch.float32, repeats=2, seconds=0)
    assert set(times["slow"]) == {1} and list(times["fast"]) == list(quant.TRIAL_ROWS)  # slow lost at one row
    timed_at_one = [name for name, rows in order if rows == 1]
    assert timed_at_one == ["none", "fast", "slow"] * 3  # a warm call each, then two turns
    assert quant.won_up_to(times["none"], times["fast"]) == quant.TRIAL_ROWS[-1]
    assert quant.won_up_to(times["none"], times["slow"]) == 0
