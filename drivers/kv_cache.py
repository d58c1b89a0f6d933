"""Preallocated KV memory for the engine, and the prefix cache.

`SlotCache` holds K and V for up to `slots` sequences of up to `capacity` tokens each,
allocated once (pages are committed by the OS only as they are written). Invariants:
the live sequences occupy rows 0..n-1 with the decoding ones first, so the K/V a batch
attends over is a view, never a copy; and every position a pass reads was written at
least once (`scrub`), since masked positions get weight 0 and 0 x NaN, which unwritten
memory may hold, is NaN.

`PrefixCache` keeps K/V of token blocks keyed by a hash of the whole prefix up to and
including the block, so a prompt prefix computed once (a shared system prompt, earlier
turns of a conversation, a preempted sequence) is copied back instead of recomputed.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

BLOCK = 32  # tokens per prefix-cache block


class SlotCache:
    def __init__(self, layers: int, slots: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: str,
                 max_capacity: int, capacity: int = 512) -> None:
        self.slots, self.max_capacity = slots, max_capacity
        self.capacity = min(capacity, max_capacity)
        shape = (layers, slots, kv_heads, self.capacity, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)  # (L, S, Hkv, T, D)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.written = [0] * slots  # per row: positions below this hold K/V written at least once

    def ensure_capacity(self, tokens: int, live: dict[int, int]) -> None:
        """Grow (by doubling, up to max_capacity) so every row can hold `tokens` tokens.
        Only the live rows' filled positions (`live`: row -> length) are copied, so the
        growth commits no memory for empty slots."""
        if tokens <= self.capacity:
            return
        if tokens > self.max_capacity:
            raise ValueError(f"{tokens} tokens exceed the cache's limit of {self.max_capacity}")
        new = self.capacity
        while new < tokens:
            new = min(new * 2, self.max_capacity)
        for name in ("k", "v"):
            old = getattr(self, name)
            grown = old.new_empty((*old.shape[:3], new, old.shape[4]))
            for row, length in live.items():
                grown[:, row, :, :length] = old[:, row, :, :length]
            setattr(self, name, grown)
        self.capacity = new
        self.written = [live.get(row, 0) for row in range(self.slots)]

    def scrub(self, first: int, count: int, length: int) -> None:
        """Zero what rows first..first+count-1 hold below `length` but never had written,
        before a pass reads them (once per row and position: later passes find it clean)."""
        if min(self.written[first:first + count], default=length) >= length:
            return  # the common case: every row is clean up to `length`
        for row in range(first, first + count):
            if self.written[row] < length:
                self.k[:, row, :, self.written[row]:length] = 0
                self.v[:, row, :, self.written[row]:length] = 0
                self.written[row] = length

    def bytes_per_token(self) -> int:
        layers, _, heads, _, dim = self.k.shape
        return 2 * layers * heads * dim * self.k.element_size()

    def write(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None:
        """Store new K/V: rows (N,), positions (N,), k/v (N, Hkv, D) for N valid tokens."""
        self.k[layer, rows, :, positions] = k
        self.v[layer, rows, :, positions] = v

    def view(self, layer: int, first: int, count: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of rows first..first+count-1 over positions 0..length-1: (B, Hkv, T, D) views."""
        return (self.k[layer, first:first + count, :, :length], self.v[layer, first:first + count, :, :length])

    def move(self, src: int, dst: int, length: int) -> None:
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]
        self.written[dst] = self._after_copy(self.written[dst], self.written[src], length)

    def swap(self, a: int, b: int, length: int) -> None:
        for t in (self.k, self.v):
            held = t[:, a, :, :length].clone()
            t[:, a, :, :length] = t[:, b, :, :length]
            t[:, b, :, :length] = held
        wa, wb = self.written[a], self.written[b]
        self.written[a], self.written[b] = self._after_copy(wa, wb, length), self._after_copy(wb, wa, length)

    @staticmethod
    def _after_copy(own: int, copied: int, length: int) -> int:
        """A row's written mark once positions below `length` came from a row marked `copied`."""
        return copied if copied < length else max(own, length)

    def read_block(self, row: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + BLOCK
        return self.k[:, row, :, start:end].clone(), self.v[:, row, :, start:end].clone()

    def write_prefix(self, row: int, blocks: list[tuple[torch.Tensor, torch.Tensor]], length: int,
                     start: int = 0) -> None:
        """Copy cached blocks into a row's positions start..length-1 (start on a block boundary)."""
        for i in range(start // BLOCK, len(blocks)):
            k, v = blocks[i]
            first = i * BLOCK
            n = min(BLOCK, length - first)
            if n <= 0:
                break
            self.k[:, row, :, first:first + n] = k[:, :, :n]
            self.v[:, row, :, first:first + n] = v[:, :, :n]
        if self.written[row] >= start:  # a contiguous written stretch grows
            self.written[row] = max(self.written[row], length)


def block_hashes(tokens: list[int]) -> list[int]:
    """One hash per full block; each covers every token before it (a chain)."""
    hashes, running = [], 0
    for start in range(0, len(tokens) - BLOCK + 1, BLOCK):
        running = hash((running, tuple(tokens[start:start + BLOCK])))
        hashes.append(running)
    return hashes


class PrefixCache:
    """LRU of token blocks' K/V, bounded by a number of blocks."""

    def __init__(self, max_blocks: int) -> None:
        self.max_blocks = max_blocks
        self.blocks: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0  # in tokens

    def lookup(self, tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The cached blocks of the longest cached prefix of `tokens`."""
        found = []
        for h in block_hashes(tokens):
            block = self.blocks.get(h)
            if block is None:
                break
            self.blocks.move_to_end(h)
            found.append(block)
        return found

    def insert(self, tokens: list[int], cache: SlotCache, row: int) -> None:
        """Remember the full blocks of `tokens`, whose K/V sit in `row` of the slot cache."""
        if self.max_blocks <= 0:
            return
        for i, h in enumerate(block_hashes(tokens)):
            if h in self.blocks:
                self.blocks.move_to_end(h)
                continue
            self.blocks[h] = cache.read_block(row, i * BLOCK)
            while len(self.blocks) > self.max_blocks:
                self.blocks.popitem(last=False)

    def statistics(self) -> dict[str, int]:
        return {"blocks": len(self.blocks), "hit_tokens": self.hits, "miss_tokens": self.misses}
