"""The engine's forward-pass pieces that need no model: fused, prepacked projections, and
the decode pass's layers in one compiled call."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch import nn

from llmos.drivers import paged, quant
from llmos.drivers.engine import EngineConfig
from llmos.drivers.llama import QUERY_BLOCK, ROWS_SUMMED_ALIKE, Projection, packing_available, query_padding
from llmos.testing import greedy_tokens, pinned_while, threads_cpus, tiny_engine, torch_threads


def _linears(*outputs: int, bias: bool = False, dtype: torch.dtype = torch.float32) -> list[nn.Linear]:
    torch.manual_seed(0)
    return [nn.Linear(48, n, bias=bias, dtype=dtype) for n in outputs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pack", [False, True])
def test_a_fused_projection_is_the_projections_side_by_side(dtype, pack):
    if pack and not packing_available("cpu", dtype):
        pytest.skip("this PyTorch build cannot prepack weights for oneDNN here")
    linears = _linears(32, 16, 16, bias=True, dtype=dtype)
    x = torch.randn(3, 5, 48, dtype=dtype)
    expected = torch.cat([lin(x) for lin in linears], dim=-1).detach()
    with torch.inference_mode():
        fused = Projection(linears, pack=pack)(x)
    assert fused.shape == (3, 5, 64)
    if dtype == torch.bfloat16:  # oneDNN computes both ways: bitwise the same
        assert torch.equal(fused, expected)
    else:  # packed float32 is oneDNN's sum against MKL's: the last bits may differ
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pack", [False, True])
def test_one_row_told_it_is_in_a_pass_of_many_gets_the_bits_of_that_pass(dtype, pack):
    """The few-row kernels sum in another order than for more rows (oneDNN's one row, MKL's
    under four in float32, at SmolLM2's down projection's k = 1536): a prompt's last tokens fed
    after its cached prefix must get the bits they had in the prompt's own pass."""
    if pack and not packing_available("cpu", dtype):
        pytest.skip("this PyTorch build cannot prepack weights for oneDNN here")
    torch.manual_seed(0)
    projection = Projection([nn.Linear(1536, 576, bias=False, dtype=dtype)], pack=pack)
    prompt = torch.randn(1, 37, 1536, dtype=dtype)
    with torch.inference_mode():
        whole = projection(prompt)
        for tail in (1, 2, 3):
            alone = projection(prompt[:, 37 - tail:], 37)
            assert alone.shape == (1, tail, 576) and torch.equal(alone, whole[:, 37 - tail:])


def test_unpacked_fusion_leaves_one_copy_of_the_weights():
    linears = _linears(32, 16)
    projection = Projection(linears, pack=False)
    assert linears[1].weight.data_ptr() == projection.weight[32:].data_ptr()


def test_a_prompt_pass_pads_its_queries_so_that_no_block_of_sdpa_s_is_smaller_than_four_rows():
    assert [query_padding(q) for q in (1, 2, 3, 4, 31, 32, 33, 35, 36, 64, 65, 193, 257)] == \
        [3, 2, 1, 0, 0, 0, 3, 1, 0, 0, 3, 3, 3]
    for queries in range(1, 1100):  # blocks of 32, 64 or 256 queries: a last one of 1-3 rows is gone
        padded = queries + query_padding(queries)
        assert all(not 0 < padded % block < ROWS_SUMMED_ALIKE for block in (QUERY_BLOCK, 64, 256))
        assert (padded >= 192) == (queries >= 192) and (padded >= 768) == (queries >= 768)  # the same block size


def test_projections_must_agree_on_biases():
    with pytest.raises(ValueError, match="biases"):
        Projection([nn.Linear(8, 4), nn.Linear(8, 4, bias=False)], pack=False)


@pytest.mark.skipif(paged.kernel() is None, reason="the compiled operators could not be built here")
@pytest.mark.parametrize("kind", [kind for kind in ("int8", "int4") if quant.available(kind)])
def test_decode_passes_through_decode_layers_give_the_per_layer_paths_tokens(kind):
    engine = tiny_engine(EngineConfig(max_batch=4, prefill_chunk=16, kv_cache_mb=1, quantization=kind))
    runner = engine.runner  # one engine both ways: its row limits, measured at load, are the same
    batches = ([[5, 17, 40, 3]], [[5, 17, 40, 3], [9, 8, 7, 6, 5, 4, 3, 2, 1]])
    runner.stackable = False
    looped = [greedy_tokens(engine, prompts) for prompts in batches]
    assert not runner._stacks
    runner.stackable = True
    assert [greedy_tokens(engine, prompts) for prompts in batches] == looped
    # One row is always quantized for a named kind: the one call served those decode passes
    # (int4 only where the compiled int4_linear multiplies it: builds with AVX2, FMA and F16C).
    assert (runner._stacks[1] is not None) == (kind == "int8" or quant.compiled_int4())


@pytest.mark.skipif(paged.kernel() is None, reason="the compiled operators could not be built here")
def test_decode_layers_take_dense_weights_where_the_quantized_ones_do_not_serve_the_rows():
    engine = tiny_engine(EngineConfig(max_batch=4, prefill_chunk=16, kv_cache_mb=1, quantization="int8"))
    runner = engine.runner
    for layer in runner.layers:  # one row quantized, two or more dense
        for projection in (layer.qkv, layer.o, layer.gate_up, layer.down):
            projection.max_rows, projection.few = 1, None
    prompts = [[5, 17, 40, 3], [9, 8, 7, 6, 5, 4, 3, 2, 1], [1, 2, 3]]
    runner.stackable = False
    looped = greedy_tokens(engine, prompts)
    runner.stackable = True
    assert greedy_tokens(engine, prompts) == looped
    weights = runner._stacks[3][1]
    assert all(scale.numel() == 0 for scale in weights[1::2])  # three rows: every projection dense


@pytest.mark.skipif(paged.kernel() is None, reason="the compiled operators could not be built here")
@pytest.mark.parametrize("kind", [kind for kind in ("int8", "int4") if quant.available(kind)])
def test_a_decode_pass_on_a_team_of_two_threads_gives_one_thread_s_tokens(kind):
    engine = tiny_engine(EngineConfig(max_batch=4, prefill_chunk=16, kv_cache_mb=1, quantization=kind))
    batches = ([[5, 17, 40, 3]], [[5, 17, 40, 3], [9, 8, 7, 6, 5, 4, 3, 2, 1]])
    with torch_threads(1):
        alone = [greedy_tokens(engine, prompts) for prompts in batches]
    with torch_threads(2):  # every operator of a quantized pass split between two threads of one team
        assert [greedy_tokens(engine, prompts) for prompts in batches] == alone
    with torch_threads(2 * (os.cpu_count() or 1)):  # more threads than CPUs: no team, a region an operator
        assert [greedy_tokens(engine, prompts) for prompts in batches] == alone


@pytest.mark.skipif(paged.kernel() is None, reason="the compiled operators could not be built here")
def test_an_operator_failing_inside_a_pass_raises_and_the_team_serves_the_next_pass():
    engine = tiny_engine(EngineConfig(max_batch=4, prefill_chunk=16, kv_cache_mb=1, quantization="int8"))
    runner, ops = engine.runner, paged.kernel()
    calls = []

    class Recording:  # the operators, keeping each decode_layers call's operands and result
        def __getattr__(self, name: str) -> Any:
            return getattr(ops, name)

        def decode_layers(self, hidden: torch.Tensor, *operands: Any) -> None:
            before = hidden.clone()
            ops.decode_layers(hidden, *operands)
            calls.append((before, hidden.clone(), operands))

    runner.fused = Recording()
    greedy_tokens(engine, [[5, 17, 40, 3]], tokens=3)
    before, after, (norms, weights, *rest) = calls[-1]
    broken = list(weights)
    broken[-2] = weights[-2][:, :8].contiguous()  # the last layer's down projection: K of 8, not the MLP's width
    with torch_threads(2):
        with pytest.raises(RuntimeError, match="x is \\(M, K\\)"):
            ops.decode_layers(before.clone(), norms, broken, *rest)
        hidden = before.clone()
        ops.decode_layers(hidden, norms, weights, *rest)  # the same pass again: K/V rewritten with the same values
    assert torch.equal(hidden, after)


@pytest.mark.skipif(paged.kernel() is None, reason="the compiled operators could not be built here")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: no team to place")
def test_a_pass_s_threads_run_on_cpus_of_their_own_while_it_runs_and_get_their_cpus_back():
    engine = tiny_engine(EngineConfig(max_batch=4, prefill_chunk=16, kv_cache_mb=1, quantization="int8"))
    everywhere = os.sched_getaffinity(0)
    assert all(cpus == everywhere for cpus in threads_cpus().values())

    def decode() -> None:
        with torch_threads(2):
            greedy_tokens(engine, [[5, 17, 40, 3]] * 4, tokens=120)

    leader, looks = pinned_while(decode)
    with_leader = [pinned for pinned in looks if leader in pinned]
    assert with_leader, "the leader was never seen on one CPU"
    for pinned in with_leader:  # a helper seen at the same time is on another CPU
        assert all(cpu != pinned[leader] for tid, cpu in pinned.items() if tid != leader)
    assert all(cpus == everywhere for cpus in threads_cpus().values())
