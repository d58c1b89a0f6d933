"""The engine's forward-pass pieces that need no model: fused, prepacked projections."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmos.drivers.llama import Projection, packing_available


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


def test_unpacked_fusion_leaves_one_copy_of_the_weights():
    linears = _linears(32, 16)
    projection = Projection(linears, pack=False)
    assert linears[1].weight.data_ptr() == projection.weight[32:].data_ptr()


def test_projections_must_agree_on_biases():
    with pytest.raises(ValueError, match="biases"):
        Projection([nn.Linear(8, 4), nn.Linear(8, 4, bias=False)], pack=False)
