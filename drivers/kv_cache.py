"""The engine's KV memory: a pool of fixed-size blocks that block tables index (vLLM's
paged layout). Which block holds what is decided by llmos.kernel.blocks.BlockManager; this
module only stores, reads and writes.

Layout per layer: keys (blocks, Hkv, D, BLOCK), transposed within a block, so the decode
kernel scores a block with BLOCK-wide multiply-adds; values (blocks, Hkv, BLOCK, D).
Allocated once for the whole budget with `torch.empty`: the OS commits pages as they are
first written, and a freed block is the next handed out (last in, first out), so the memory
in use follows the most tokens held at once, not the budget. Invariant: a block is zeroed before a pass reads it
for the first time (`zero`), since a padded row reads positions it never wrote, masked, and
0 x NaN, which unwritten memory may hold, is NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmos.kernel.blocks import BLOCK, NULL_BLOCK


class KVPool:
    """K/V stored in `dtype`; `gather` returns them in `read_as` (default: `dtype`), `write`
    takes any and rounds (a float32 model's K/V may be kept in bfloat16: drivers/llama.py)."""

    def __init__(self, layers: int, blocks: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: str,
                 read_as: torch.dtype | None = None) -> None:
        self.blocks, self.kv_heads, self.head_dim = blocks, kv_heads, head_dim
        self.read_as = read_as or dtype
        # The compiled gather (drivers/paged.py), where the runner has it: the same values as
        # PyTorch's indexing below, in one pass over the bytes.
        self.gather_kernel: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
        self.k = torch.empty((layers, blocks, kv_heads, head_dim, BLOCK), dtype=dtype, device=device)
        self.v = torch.empty((layers, blocks, kv_heads, BLOCK, head_dim), dtype=dtype, device=device)
        self.zero([NULL_BLOCK])

    @staticmethod
    def blocks_in(budget_bytes: int, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return budget_bytes // KVPool.block_bytes(layers, kv_heads, head_dim, dtype)

    @staticmethod
    def block_bytes(layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * layers * kv_heads * head_dim * BLOCK * torch.empty((), dtype=dtype).element_size()

    def bytes_per_token(self) -> int:
        return self.block_bytes(self.k.shape[0], self.kv_heads, self.head_dim, self.k.dtype) // BLOCK

    def zero(self, blocks: list[int]) -> None:
        if blocks:
            index = torch.tensor(blocks, device=self.k.device)
            self.k.index_fill_(1, index, 0)
            self.v.index_fill_(1, index, 0)

    def write(self, layer: int, blocks: torch.Tensor, offsets: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new K/V: token i goes to block blocks[i] at offset offsets[i]; k/v (N, Hkv, D)."""
        self.k[layer, blocks, :, :, offsets] = k.to(self.k.dtype)
        self.v[layer, blocks, :, offsets] = v.to(self.v.dtype)

    def gather(self, layer: int, tables: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of each row's blocks over positions 0..length-1, contiguous copies
        (B, Hkv, length, D): what sdpa takes (prefill, scoring, and decoding without the kernel)."""
        if self.gather_kernel is not None:
            return self.gather_kernel(self.k[layer], self.v[layer], tables, length, self.read_as)
        bsz, width = tables.shape
        k = self.k[layer][tables]  # (B, W, Hkv, D, BLOCK)
        v = self.v[layer][tables]  # (B, W, Hkv, BLOCK, D)
        k = k.permute(0, 2, 1, 4, 3).reshape(bsz, self.kv_heads, width * BLOCK, self.head_dim)
        v = v.permute(0, 2, 1, 3, 4).reshape(bsz, self.kv_heads, width * BLOCK, self.head_dim)
        return k[:, :, :length].to(self.read_as), v[:, :, :length].to(self.read_as)
