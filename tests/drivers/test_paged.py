"""The compiled operators of drivers/paged_attention.cpp beside the PyTorch code they replace:
the fused RMSNorm, the MLP's SiLU and product, decode's rotary embedding with its K/V store (the quantized path), and
the LoRA rows of a mixed-adapter batch. Paged attention itself is checked through the engine (test_engine.py)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from llmos.drivers import paged, quant
from llmos.drivers.kv_cache import KVPool
from llmos.drivers.llama import _swap_halves
from llmos.testing import greedy_tokens, one_torch_thread, tiny_engine, torch_threads

ops = paged.kernel()
pytestmark = pytest.mark.skipif(ops is None, reason="the compiled kernel could not be built here")
one_thread = pytest.fixture(autouse=True)(one_torch_thread)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_norm_is_llama_s_rms_norm(dtype):
    torch.manual_seed(0)
    norm = LlamaRMSNorm(576, eps=1e-5).to(dtype)
    norm.weight.data = torch.randn(576).to(dtype)
    x = (torch.randn(5, 3, 576) * 4).to(dtype)
    got, want = ops.rms_norm(x, norm.weight.data, 1e-5), norm(x)
    assert got.dtype == dtype and got.shape == x.shape
    if dtype == torch.bfloat16:  # the float32 statistics differ below bfloat16's rounding
        assert (got != want).float().mean() < 0.001
        torch.testing.assert_close(got, want, atol=0.02, rtol=0.01)
    else:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        ops.rms_norm(x, norm.weight.data.float() if dtype != torch.float32 else norm.weight.data.double(), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_silu_and_product_are_llama_s_mlp_activation(dtype):
    torch.manual_seed(0)
    gate_up = (torch.randn(5, 3, 2 * 1536) * 4).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    got, want = ops.silu_mul(gate_up), torch.nn.functional.silu(gate) * up
    assert got.dtype == dtype and got.shape == (5, 3, 1536)
    if dtype == torch.bfloat16:  # SiLU's exp may differ from PyTorch's below bfloat16's rounding
        assert (got != want).float().mean() < 0.01
        torch.testing.assert_close(got, want, atol=0.02, rtol=0.01)
    else:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert ops.silu_mul(gate_up[:0]).shape == (0, 3, 1536)
    with pytest.raises(RuntimeError, match="2I"):
        ops.silu_mul(torch.randn(2, 7))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.silu_mul(torch.randn(2, 8, dtype=torch.float64))


@pytest.mark.parametrize(("dtype", "stored"), [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                               (torch.float32, torch.bfloat16)])  # a float32 model's K/V in bfloat16
def test_rope_store_rotates_the_queries_and_keys_and_writes_k_and_v_where_the_blocks_say(dtype, stored):
    torch.manual_seed(1)
    batch, q_heads, kv_heads, dim = 3, 6, 2, 32
    qkv = torch.randn(batch, q_heads + 2 * kv_heads, dim).to(dtype)
    angles = torch.rand(batch, dim // 2) * 6
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(dtype)
    sin = torch.cat([-angles.sin(), angles.sin()], -1).to(dtype)  # the first half negated, as the runner folds it
    blocks, offsets = torch.tensor([4, 1, 6]), torch.tensor([0, 15, 7])
    fused, python = KVPool(1, 8, kv_heads, dim, stored, "cpu"), KVPool(1, 8, kv_heads, dim, stored, "cpu")
    for pool in (fused, python):
        pool.zero(list(range(8)))
    q = ops.rope_store(qkv, cos, sin, fused.k[0], fused.v[0], blocks, offsets, q_heads)

    turned = (qkv[:, : q_heads + kv_heads].float() * cos[:, None].float()
              + _swap_halves(qkv[:, : q_heads + kv_heads]).float() * sin[:, None].float())
    python.write(0, blocks, offsets, turned[:, q_heads:].to(dtype), qkv[:, q_heads + kv_heads:])
    tolerance = {"atol": 0.02, "rtol": 0.01} if dtype == torch.bfloat16 else {"atol": 1e-6, "rtol": 1e-6}
    torch.testing.assert_close(q, turned[:, :q_heads].to(dtype), **tolerance)
    assert q.dtype == dtype and fused.k.dtype == fused.v.dtype == stored
    kept = {"atol": 0.02, "rtol": 0.01} if stored == torch.bfloat16 else tolerance
    for block in blocks.tolist():
        torch.testing.assert_close(fused.k[0, block], python.k[0, block], **kept)
        assert torch.equal(fused.v[0, block], python.v[0, block])  # values are copied as they are
    untouched = [b for b in range(8) if b not in blocks.tolist()]
    assert torch.equal(fused.k[0, untouched], python.k[0, untouched])
    with pytest.raises(RuntimeError, match="shapes disagree"):
        ops.rope_store(qkv, cos, sin, fused.k[0], fused.v[0], blocks, offsets, q_heads + 1)
    with pytest.raises(RuntimeError, match="row 2 writes to block 8 offset 7 of 8"):  # never past the pool
        ops.rope_store(qkv, cos, sin, fused.k[0], fused.v[0], torch.tensor([4, 1, 8]), offsets, q_heads)
    with pytest.raises(RuntimeError, match="offset 16"):
        ops.rope_store(qkv, cos, sin, fused.k[0], fused.v[0], blocks, torch.tensor([0, 16, 7]), q_heads)


def test_paged_decode_reads_bfloat16_k_and_v_under_float32_queries_as_their_float32_values():
    torch.manual_seed(2)
    batch, q_heads, kv_heads, dim, blocks = 3, 9, 3, 64, 6
    q = torch.randn(batch, q_heads, dim)
    k = torch.randn(blocks, kv_heads, dim, 16).to(torch.bfloat16)
    v = torch.randn(blocks, kv_heads, 16, dim).to(torch.bfloat16)
    table = torch.tensor([[1, 4], [0, 0], [5, 2]], dtype=torch.int32)
    lens = torch.tensor([20, 3, 32], dtype=torch.int32)
    got = ops.decode(q, k, v, table, lens, 0.125)
    assert got.dtype == torch.float32  # the same arithmetic on the same (widened) numbers: the same bits
    assert torch.equal(got, ops.decode(q, k.float(), v.float(), table, lens, 0.125))
    with pytest.raises(RuntimeError, match="share q.s dtype"):  # bfloat16 queries over float32 K/V: no such kernel
        ops.decode(q.to(torch.bfloat16), k.float(), v.float(), table, lens, 0.125)
    with pytest.raises(RuntimeError, match="share q.s dtype"):
        ops.decode(q, k.half(), v.half(), table, lens, 0.125)


def filled_pool(stored: torch.dtype, read_as: torch.dtype, blocks: int, kv_heads: int, dim: int) -> KVPool:
    pool = KVPool(1, blocks, kv_heads, dim, stored, "cpu", read_as=read_as)
    pool.k.normal_()
    pool.v.normal_()
    return pool


@pytest.mark.parametrize(("stored", "read_as"), [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                 (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("length", [1, 16, 17, 40])
def test_gather_kv_gives_the_keys_and_values_pytorch_s_indexing_does(stored, read_as, length):
    torch.manual_seed(3)
    pool = filled_pool(stored, read_as, blocks=8, kv_heads=3, dim=64)
    tables = torch.tensor([[1, 4, 7], [0, 0, 0], [5, 2, 0]])  # row 1 all null blocks, row 2 padded with them
    want = pool.gather(0, tables, length)
    pool.gather_kernel = ops.gather_kv
    got = pool.gather(0, tables, length)
    for g, w in zip(got, want, strict=True):
        assert g.shape == (3, 3, length, 64) and g.dtype == read_as and g.is_contiguous()
        assert torch.equal(g, w)


def test_gather_kv_splits_a_large_gather_between_threads_without_changing_it():
    torch.manual_seed(4)
    pool = filled_pool(torch.bfloat16, torch.bfloat16, blocks=300, kv_heads=3, dim=64)
    tables = torch.randperm(299)[:280].add(1).view(2, 140)  # 840 units of a block each: several chunks
    want = pool.gather(0, tables, 140 * 16 - 5)
    pool.gather_kernel = ops.gather_kv
    with torch_threads(2):
        got = pool.gather(0, tables, 140 * 16 - 5)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_gather_kv_refuses_a_length_past_the_table_and_other_dtypes():
    pool = filled_pool(torch.float32, torch.float32, blocks=4, kv_heads=1, dim=16)
    k, v, table = pool.k[0], pool.v[0], torch.tensor([[1, 2]])
    with pytest.raises(RuntimeError, match="length 33 outside the table's 32 positions"):
        ops.gather_kv(k, v, table, 33, torch.float32)
    with pytest.raises(RuntimeError, match="int64 table"):
        ops.gather_kv(k, v, table.int(), 8, torch.float32)
    with pytest.raises(RuntimeError, match="stored in dtype"):  # float32 K/V are never read as bfloat16
        ops.gather_kv(k, v, table, 8, torch.bfloat16)
    with pytest.raises(RuntimeError, match="stored in dtype"):
        ops.gather_kv(k.half(), v.half(), table, 8, torch.float16)


def test_the_llama_runner_gathers_prompt_passes_with_the_compiled_kernel():
    prompts = [list(range(3, 50)), [5, 17, 99, 3, 42, 8]]  # 47 tokens: three 16-token chunks, gathered thrice

    def replies(compiled: bool) -> list[list[int]]:
        engine = tiny_engine(eos_ids=frozenset())
        assert engine.runner.cache.gather_kernel is not None
        if not compiled:
            engine.runner.cache.gather_kernel = None
        return greedy_tokens(engine, prompts, tokens=8)

    assert replies(compiled=True) == replies(compiled=False)


def test_the_engine_decodes_the_same_tokens_with_the_fused_operators():
    prompts = [[5, 17, 99, 3, 42, 8], list(range(30, 70))]

    def decode(fused: bool) -> list[list[int]]:
        engine = tiny_engine(eos_ids=frozenset())
        engine.runner.fused = ops if fused else None
        return greedy_tokens(engine, prompts)

    assert decode(fused=True) == decode(fused=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_add_adds_each_row_s_own_adapter_columns_in_place(dtype):
    torch.manual_seed(0)
    rows, ins, outs, rank = 6, 48, 40, 12  # three adapters of rank 4 in columns 0, 4, 8
    a, bt = (torch.randn(rank, ins) / 4).to(dtype), (torch.randn(rank, outs) / 4).to(dtype)
    x, y = torch.randn(rows, 1, ins).to(dtype), torch.randn(rows, 1, outs).to(dtype)
    start = torch.tensor([0, 4, 8, 0, 0, 4], dtype=torch.int32)
    count = torch.tensor([4, 4, 4, 0, 4, 2], dtype=torch.int32)  # row 3: the base model; row 5: a part of one
    want = y.float().view(rows, outs).clone()
    for r in range(rows):
        cols = slice(int(start[r]), int(start[r] + count[r]))
        want[r] += (x.view(rows, ins)[r].float() @ a[cols].float().T) @ bt[cols].float()
    got = y.clone()
    ops.lora_add(got, x, a, bt, start, count)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05  # rounded once, to bfloat16
    assert torch.allclose(got.view(rows, outs).float(), want, atol=tolerance, rtol=tolerance)
    assert torch.equal(got[3], y[3])  # no adapter: untouched


def test_lora_add_refuses_columns_past_the_factors_and_mixed_dtypes():
    a, bt = torch.zeros(4, 8), torch.zeros(4, 8)
    x, y = torch.zeros(2, 8), torch.zeros(2, 8)
    with pytest.raises(RuntimeError, match="reads columns 2\\+4 of 4"):
        ops.lora_add(y, x, a, bt, torch.tensor([0, 2], dtype=torch.int32), torch.tensor([4, 4], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="dtypes differ"):
        ops.lora_add(y, x.bfloat16(), a, bt, torch.zeros(2, dtype=torch.int32), torch.ones(2, dtype=torch.int32))


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 16, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_is_x_times_the_dequantized_weight(rows, dtype):
    torch.manual_seed(0)
    n, k = 12 * 3 + 7, 5 * 16 + 7  # weight rows past the 4- and 12-row tiles, inputs past the vector width
    codes = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    scale = torch.rand(n) / 100
    x = torch.randn(rows, k).to(dtype)
    weight = codes.float() * scale[:, None]
    want = x.float() @ weight.T
    got = ops.int8_linear(x, codes, scale)
    assert got.dtype == dtype and got.shape == (rows, n)
    # AVX2 builds round each row of x to int16 codes of at least 2^14 steps for this k: each
    # input is off by at most half a step (its row's largest / 2^15), times its weight.
    rounding = x.float().abs().amax(dim=1, keepdim=True) / 2**15 @ weight.abs().sum(dim=1, keepdim=True).T
    tolerance = 1e-4 if dtype == torch.float32 else 0.02  # bfloat16: y rounded once more
    assert ((got.float() - want).abs() <= rounding + tolerance * (1 + want.abs())).all()


def test_int8_linear_does_not_overflow_on_long_rows_of_extremes():
    k = 20_000  # past 4096 inputs an AVX2 build rounds x to fewer bits, so no int32 sum overflows
    codes = torch.full((3, k), -128, dtype=torch.int8)
    codes[1] = 127
    x = torch.ones(2, k)
    x[1, ::2] = -1
    got = ops.int8_linear(x, codes, torch.ones(3))
    want = x @ codes.float().T
    assert torch.allclose(got, want, rtol=1e-4, atol=1.0)


def test_int8_linear_refuses_mismatched_shapes_and_dtypes():
    codes, scale = torch.zeros(8, 16, dtype=torch.int8), torch.ones(8)
    with pytest.raises(RuntimeError, match="x is \\(M, K\\)"):
        ops.int8_linear(torch.zeros(2, 15), codes, scale)
    with pytest.raises(RuntimeError, match="w is \\(N, K\\) int8"):
        ops.int8_linear(torch.zeros(2, 16), codes.float(), scale)
    with pytest.raises(RuntimeError, match="scale is \\(N,\\) float32"):
        ops.int8_linear(torch.zeros(2, 16), codes, scale.bfloat16())
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.int8_linear(torch.zeros(2, 16, dtype=torch.float64), codes, scale)


integer_only = pytest.mark.skipif(ops is None or not ops.int4_kernel(),
                                  reason="int4_linear is built only where AVX2, FMA and F16C are")


def int4_weight(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random packed int4 weights (codes 0..15, both ends included), their float16 scales and
    minimums as `int4_linear` takes them, and the weight they stand for."""
    groups = k // quant.INT4_GROUP
    codes = torch.randint(0, 16, (n, groups, quant.INT4_GROUP))
    codes[0, 0, :2] = torch.tensor([0, 15])
    scale = (torch.rand(n, groups) / 50).half()
    low = (-torch.rand(n, groups) / 10).half()
    weight = (codes * scale.float()[..., None] + low.float()[..., None]).view(n, k)
    return quant.pack_int4(codes), torch.cat([scale, low], dim=1).contiguous(), weight


@integer_only
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 16, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_linear_is_x_times_the_dequantized_weight(rows, dtype):
    torch.manual_seed(0)
    n, k = 12 * 3 + 7, 3 * 64  # weight rows past the tiles and the 12-row blocks; three blocks of 64
    packed, scale_min, weight = int4_weight(n, k)
    x = torch.randn(rows, k).to(dtype)
    want = x.float() @ weight.T
    got = ops.int4_linear(x, packed, scale_min)
    assert got.dtype == dtype and got.shape == (rows, n)
    # x is rounded to int16 codes of 2^15 steps: each input off by at most half a step.
    rounding = x.float().abs().amax(dim=1, keepdim=True) / 2**15 @ weight.abs().sum(dim=1, keepdim=True).T
    tolerance = 1e-4 if dtype == torch.float32 else 0.02
    assert ((got.float() - want).abs() <= rounding + tolerance * (1 + want.abs())).all()


@integer_only
def test_int4_linear_refuses_mismatched_shapes_and_dtypes():
    packed, scale_min, _ = int4_weight(8, 64)
    with pytest.raises(RuntimeError, match="x is \\(M, K\\)"):
        ops.int4_linear(torch.zeros(2, 32), packed, scale_min)
    with pytest.raises(RuntimeError, match="multiple of 64"):
        ops.int4_linear(torch.zeros(2, 32), packed[:, :16].contiguous(), scale_min[:, :2].contiguous())
    with pytest.raises(RuntimeError, match="float16"):
        ops.int4_linear(torch.zeros(2, 64), packed, scale_min.float())
    with pytest.raises(RuntimeError, match="uint8"):
        ops.int4_linear(torch.zeros(2, 64), packed.to(torch.int8), scale_min)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.int4_linear(torch.zeros(2, 64, dtype=torch.float64), packed, scale_min)


def test_the_build_multiplies_in_integers_exactly_where_the_cpu_has_avx2_and_no_avx512():
    # The flags as llmos reads them (an emulated AVX2 run, tests/drivers/test_avx2_path.py,
    # hides the avx512 ones and builds for x86-64-v3).
    flags = paged.cpu_flags()
    has_avx2 = {"avx2", "fma", "f16c"} <= flags
    assert ops.int4_kernel() == has_avx2
    assert ops.integer_kernels() == (has_avx2 and "avx512f" not in flags)
