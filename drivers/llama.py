"""A forward pass for Llama-architecture models (SmolLM2, Llama, Mistral-style) over the
Hugging Face module's own weights and layers, with K/V in llmos's slot cache.

It reuses the HF submodules (norms, rotary embedding, projections, MLP) so the numbers
match `model.generate`; only the attention's K/V bookkeeping is ours. Grouped-query
attention is done by folding each K/V head's query group into the query length, so K/V
are never repeated per head.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llmos.drivers.kv_cache import SlotCache

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


@dataclass(frozen=True)
class Batch:
    """One forward pass over rows first..first+B-1 of the slot cache."""

    first: int
    tokens: torch.Tensor  # (B, Q) input ids, right-padded
    starts: torch.Tensor  # (B,) position of each row's first input token
    lengths: torch.Tensor  # (B,) valid input tokens per row (1 when decoding)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def flash_attention_available(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


class LlamaRunner:
    def __init__(self, model: Any, cache_factory: Any, *, flash: bool = False) -> None:
        arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"the llmos engine runs {SUPPORTED_ARCHITECTURES}, not {arch}")
        cfg = model.config
        self.model = model
        self.layers = model.model.layers
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.group = self.heads // self.kv_heads
        self.scale = self.head_dim**-0.5
        self.cache: SlotCache = cache_factory(len(self.layers), self.kv_heads, self.head_dim)
        # FlashAttention serves decode passes on CUDA (never run on the CPU-only machines we
        # develop on); prefill and every CPU pass use PyTorch's sdpa.
        self.flash_decode = None
        if flash:
            from flash_attn import flash_attn_with_kvcache

            self.flash_decode = flash_attn_with_kvcache

    @torch.inference_mode()
    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits (B, vocab) at each row's last valid input token; K/V of valid tokens cached."""
        tokens = batch.tokens
        bsz, qlen = tokens.shape
        offsets = torch.arange(qlen, device=tokens.device)
        positions = batch.starts[:, None] + offsets[None, :]  # (B, Q)
        valid = offsets[None, :] < batch.lengths[:, None]  # (B, Q)
        total = int((batch.starts + batch.lengths).max())
        mask = self._mask(positions, valid, total)  # (B, 1, G*Q, T)
        rows = (torch.arange(bsz, device=tokens.device) + batch.first)[:, None].expand(bsz, qlen)[valid]
        write_pos = positions[valid]

        hidden = self.model.model.embed_tokens(tokens)  # (B, Q, H)
        cos, sin = self.model.model.rotary_emb(hidden, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, Q, D)
        for i, layer in enumerate(self.layers):
            hidden = hidden + self._attention(i, layer.self_attn, layer.input_layernorm(hidden), cos, sin, mask,
                                              batch, rows, write_pos, valid, total)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        last = (batch.lengths - 1).clamp(min=0)
        final = self.model.model.norm(hidden[torch.arange(bsz), last])  # (B, H)
        return self.model.lm_head(final).float()

    def _mask(self, positions: torch.Tensor, valid: torch.Tensor, total: int) -> torch.Tensor:
        keys = torch.arange(total, device=positions.device)
        allowed = keys[None, None, :] <= positions[:, :, None]  # causal: (B, Q, T)
        allowed &= valid[:, :, None]
        allowed[:, :, 0] |= ~valid  # padding queries see one key, so softmax stays finite
        return allowed.unsqueeze(1).repeat(1, 1, self.group, 1)  # (B, 1, G*Q, T): query index g*Q + q

    def _attention(self, index: int, attn: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   mask: torch.Tensor, batch: Batch, rows: torch.Tensor, write_pos: torch.Tensor,
                   valid: torch.Tensor, total: int) -> torch.Tensor:
        bsz, qlen, _ = x.shape
        q = attn.q_proj(x).view(bsz, qlen, self.heads, self.head_dim).transpose(1, 2)  # (B, Hq, Q, D)
        k = attn.k_proj(x).view(bsz, qlen, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, Q, D)
        v = attn.v_proj(x).view(bsz, qlen, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        self.cache.write(index, rows, write_pos, k.transpose(1, 2)[valid], v.transpose(1, 2)[valid])
        if self.flash_decode is not None and qlen == 1:
            return attn.o_proj(self._flash_decode(index, q, batch, total).reshape(bsz, 1, -1))
        keys, values = self.cache.view(index, batch.first, bsz, total)  # (B, Hkv, T, D)
        # Fold each K/V head's group of query heads into the query axis: (B, Hkv, G*Q, D).
        q = q.reshape(bsz, self.kv_heads, self.group * qlen, self.head_dim)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale)
        out = out.reshape(bsz, self.heads, qlen, self.head_dim).transpose(1, 2).reshape(bsz, qlen, -1)
        return attn.o_proj(out)

    def _flash_decode(self, index: int, q: torch.Tensor, batch: Batch, total: int) -> torch.Tensor:
        """One query per row against that row's cached keys: (B, 1, Hq, D). CUDA only."""
        keys, values = self.cache.view(index, batch.first, q.shape[0], total)  # (B, Hkv, T, D)
        return self.flash_decode(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                 cache_seqlens=(batch.starts + batch.lengths).to(torch.int32),
                                 softmax_scale=self.scale, causal=False)
