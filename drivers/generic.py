"""The generic path: any causal LM that transformers loads, run by its own forward (its own
layers, norms, rotary variants and soft-capping) over the engine's paged KV pool
(drivers/kv_cache.py), so that it batches as the llama engine does: one pass for every
decoding row, chunked prefills beside them, prefix blocks shared by reference, options scored
side by side (`Batch.trees`). `GenericRunner` has the interface the engine uses of
drivers/llama.py's `LlamaRunner`.

One padded batch of rows at different positions becomes one HF forward by three things:
- explicit position ids: each row's tokens from its own start (a scored row's options restart
  theirs right after the prompt);
- explicit 4D attention masks, one per layer type (`{"full_attention": ..., "sliding_attention":
  ...}`, which models with mixed layers take as they are): a query sees its row's keys up to
  itself (or, in a tree, its own option's), and on a sliding layer only those less than the
  window behind it, counted in positions, not cache slots;
- the `Cache` handed to the model (`PagedCache`), a view of the pool for this one pass: each
  attention layer's `update` writes the pass's valid tokens' K/V into the rows' blocks and
  returns every key slot 0..T-1 of each row, gathered; the mask says which of them count.

It is slower than the llama engine (HF's modules, a gathered copy of the keys per layer, no
compiled decode kernel, no quantization), and correct for what it accepts: layers whose state
is not K/V (recurrent, linear attention) are refused when the runner is built
(model_info.generic_refusal) or, failing that, by the first pass in which a layer never
wrote its K/V.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from llmos.drivers.kv_cache import KVPool
from llmos.drivers.llama import NO_QUANT, Batch, architecture_of
from llmos.drivers.model_info import generic_refusal
from llmos.kernel.blocks import BLOCK
from llmos.kernel.errors import ConfigError

log = logging.getLogger(__name__)

# The attention implementations that apply a 4D mask as given (flash-attention takes none,
# flex-attention its own block masks): any other is switched to sdpa.
MASKED_ATTENTION = ("sdpa", "eager")
SLIDING = "sliding_attention"


@dataclass(frozen=True)
class _Layout:
    """Where each input token of a pass sits, and what every layer of the pass shares."""

    slots: torch.Tensor  # (B, Q) cache position of each input token (padding: past its row's end)
    positions: torch.Tensor  # (B, Q) its position for the model (a tree's option tokens restart theirs)
    valid: torch.Tensor  # (B, Q) real input, not padding
    key_positions: torch.Tensor  # (B, T) the position of the token each key slot holds
    total: int  # key slots 0..total-1 are attended over
    tables: torch.Tensor  # (B, W) block tables
    blocks: torch.Tensor  # (N,) the block each valid input token's K/V goes to
    offsets: torch.Tensor  # (N,) and its offset there
    valid_index: torch.Tensor  # (N,) flat index of each valid token in (B*Q)

    @staticmethod
    def of(batch: Batch) -> _Layout:
        steps = torch.arange(batch.tokens.shape[1], device=batch.tokens.device)
        slots = batch.starts[:, None] + steps[None, :]
        valid = steps[None, :] < batch.lengths[:, None]
        total = int((batch.starts + batch.lengths).max())
        positions, key_positions = _positions(batch, slots, total)
        valid_index = valid.reshape(-1).nonzero().squeeze(1)
        clamped = slots.clamp(max=batch.tables.shape[1] * BLOCK - 1)  # padding may point past the table
        return _Layout(slots=slots, positions=positions, valid=valid, key_positions=key_positions, total=total,
                       tables=batch.tables, blocks=batch.tables.gather(1, clamped // BLOCK).reshape(-1)[valid_index],
                       offsets=(clamped % BLOCK).reshape(-1)[valid_index], valid_index=valid_index)


def _positions(batch: Batch, slots: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each input token's position (B, Q), and the position of the token in each key slot
    (B, T): its slot, except in a tree, whose options all start right after the prompt."""
    positions = slots.clone()
    key_positions = torch.arange(total, device=slots.device).repeat(len(slots), 1)
    for row, (tree_positions, _) in batch.trees.items():
        start, n = int(batch.starts[row]), len(tree_positions)
        positions[row, :n] = tree_positions
        key_positions[row, start:start + n] = tree_positions
    return positions, key_positions


class _PagedLayer(CacheLayerMixin):
    """One layer's K/V for one pass: written into the pool and read back from it, never held here."""

    def __init__(self, pool: KVPool, index: int, layout: _Layout, sliding: bool) -> None:
        super().__init__()
        self.pool, self.index, self.layout, self.is_sliding = pool, index, layout, sliding
        self.is_initialized = True  # its past is in the pool already
        self.written = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The pass's new K/V (B, Hkv, Q, D) go to the rows' blocks (valid tokens only); returns
        each row's keys and values over slots 0..T-1 (B, Hkv, T, D), the new ones included."""
        self._check_shape(key_states, value_states)
        layout, dtype = self.layout, self.pool.k.dtype
        self.pool.write(self.index, layout.blocks, layout.offsets, _flat(key_states, layout).to(dtype),
                        _flat(value_states, layout).to(dtype))
        self.written = True
        keys, values = self.pool.gather(self.index, layout.tables, layout.total)
        return keys.to(key_states.dtype), values.to(value_states.dtype)

    def _check_shape(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        wanted = (self.pool.kv_heads, self.pool.head_dim)
        for name, states in (("keys", key_states), ("values", value_states)):
            if states.dim() != 4 or (states.shape[1], states.shape[3]) != wanted:
                raise ValueError(f"layer {self.index} caches {name} of shape {tuple(states.shape)}; the generic "
                                 f"path keeps (batch, {wanted[0]} heads, tokens, {wanted[1]}) from the config")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.layout.total, 0

    def get_seq_length(self) -> int:
        # Rows start at different positions, so no one length is right; the runner passes
        # position ids and masks itself, so models only read this where they do not need it.
        return int(self.layout.slots[:, 0].min())

    def get_max_length(self) -> int:
        return -1


def _flat(states: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """(B, Hkv, Q, D) -> the valid tokens' (N, Hkv, D)."""
    bsz, heads, qlen, dim = states.shape
    return states.transpose(1, 2).reshape(bsz * qlen, heads, dim)[layout.valid_index]


class RecurrentState(RuntimeError):
    """A model asked its cache for a recurrent layer's state, which the paged pool does not keep."""


class PagedCache(Cache):
    """The transformers `Cache` of one pass: every layer reads and writes the paged pool."""

    def __init__(self, pool: KVPool, layout: _Layout, sliding: Sequence[bool]) -> None:
        super().__init__(layers=[_PagedLayer(pool, i, layout, s) for i, s in enumerate(sliding)])

    def unwritten(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if not layer.written]

    # A hybrid model (Mamba or linear-attention layers beside attention) asks for these; its
    # config did not say so in a way generic_refusal reads.
    def _recurrent(self, *args: Any, **kwargs: Any) -> Any:
        raise RecurrentState("the model has layers with a recurrent state (Mamba, linear attention), which the "
                             "generic path does not keep")

    get_conv_state = update_conv_state = get_recurrent_state = update_recurrent_state = _recurrent
    has_previous_state = _recurrent


class _NoAdapters:
    """The generic path serves no LoRA adapter (they patch the llama engine's own projections):
    the adapter set of drivers/lora.py, always empty."""

    def __init__(self, architecture: str) -> None:
        self.architecture = architecture
        self.adapters: dict[str, Any] = {}

    def refusal(self) -> ConfigError:
        return ConfigError(f"LoRA adapters are served on the llama engine only; {self.architecture} runs on the "
                           "generic path")

    def add(self, adapter: Any) -> None:
        raise self.refusal()

    def remove(self, name: str) -> None:
        raise self.refusal()

    def describe(self) -> list[dict[str, Any]]:
        return []


class GenericRunner:
    """The engine's runner for any causal LM whose layers all attend: the model's own forward,
    K/V in the pool that `cache_factory(layers, kv_heads, head_dim)` makes."""

    def __init__(self, model: Any, cache_factory: Callable[[int, int, int], KVPool], *,
                 quantization: str = "none") -> None:
        self.architecture = architecture_of(model)
        refusal = generic_refusal(model.config.to_dict())
        if refusal is not None:
            raise ValueError(f"llmos cannot run {self.architecture}: {refusal}")
        _use_masked_attention(model)
        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.model = model
        self.layer_types = layer_types(text)
        self.windows = {kind: text.sliding_window if kind == SLIDING else None for kind in set(self.layer_types)}
        self.cache: KVPool = cache_factory(len(self.layer_types), *kv_shape(text))
        self.quantization = NO_QUANT  # HF's own dense layers
        if quantization not in ("none", "auto"):
            log.warning("%s runs on the generic path, which does not quantize: %s is ignored", self.architecture,
                        quantization)
        self.adapters = _NoAdapters(self.architecture)
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"  # transformers >= 5 / 4.x
        self._keeps_logits = "logits_to_keep" in parameters
        self._boolean_masks = model.config._attn_implementation == "sdpa"  # eager adds its mask to the scores

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits (B, vocab) at each row's last valid input token; K/V of valid tokens cached."""
        return self.forward_spans(batch, ())[0]

    @torch.inference_mode()
    def forward_spans(self, batch: Batch, spans: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`forward`'s logits, and for each span (row in the batch, n) the logits (n, vocab)
        at that row's first n positions: what scoring a continuation needs."""
        if any(getattr(batch, "adapters", ())):
            raise self.adapters.refusal()
        layout = _Layout.of(batch)
        cache = PagedCache(self.cache, layout, [kind == SLIDING for kind in self.layer_types])
        kept, last, spanned = self._kept_logits(batch, spans)
        try:
            output = self.model(input_ids=batch.tokens, position_ids=layout.positions,
                                attention_mask=self._masks(layout, batch), use_cache=True,
                                **{self._cache_argument: cache}, **kept)
        except RecurrentState as exc:
            raise RuntimeError(f"llmos cannot run {self.architecture}: {exc}") from None
        if unwritten := cache.unwritten():
            raise RuntimeError(f"{self.architecture}: layers {unwritten} kept no K/V in the cache (their state is "
                               "something else): the generic path cannot run this model")
        logits = output.logits
        rows = torch.arange(len(last), device=logits.device)
        spanned_logits = [logits[row, columns].float() for (row, _), columns in zip(spans, spanned, strict=True)]
        return logits[rows, last].float(), spanned_logits

    def _kept_logits(self, batch: Batch, spans: Sequence[tuple[int, int]]
                     ) -> tuple[dict[str, Any], torch.Tensor, list[torch.Tensor]]:
        """What to ask the model for (only the positions whose logits are read: a prefill chunk's
        full logits over a large vocabulary would dwarf the pass), and which columns of its
        logits are each row's last token and each span's tokens."""
        device = batch.tokens.device
        last = (batch.lengths - 1).clamp(min=0)
        if not self._keeps_logits:
            return {}, last, [torch.arange(n, device=device) for _, n in spans]
        if batch.tokens.shape[1] == 1:
            return {"logits_to_keep": 1}, torch.zeros_like(last), []
        wanted = sorted({*last.tolist(), *range(max((n for _, n in spans), default=0))})
        index = torch.tensor(wanted, device=device)
        columns = [torch.searchsorted(index, torch.arange(n, device=device)) for _, n in spans]
        return {"logits_to_keep": index}, torch.searchsorted(index, last), columns

    def _masks(self, layout: _Layout, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:
        """The 4D mask (B, 1, Q, T) of each layer type; one tensor when every layer is alike."""
        allowed = _allowed(layout, batch)
        masks = {kind: self._as_mask(_within(allowed, layout, window), layout)
                 for kind, window in self.windows.items()}
        return next(iter(masks.values())) if len(masks) == 1 else masks

    def _as_mask(self, allowed: torch.Tensor, layout: _Layout) -> torch.Tensor:
        allowed[:, :, 0] |= ~layout.valid  # padding queries see one key, so softmax stays finite
        allowed = allowed.unsqueeze(1)
        if self._boolean_masks:
            return allowed
        dtype = self.model.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed,
                                                                                           torch.finfo(dtype).min)


def _allowed(layout: _Layout, batch: Batch) -> torch.Tensor:
    """(B, Q, T): which key slots each valid query sees: its row's up to its own slot, and in a
    tree (options side by side) only its own option's tokens of the chunk."""
    keys = torch.arange(layout.total, device=layout.slots.device)
    allowed = keys[None, None, :] <= layout.slots[:, :, None]
    for row, (_, sees) in batch.trees.items():
        start, n = int(batch.starts[row]), sees.shape[0]
        allowed[row, :n, start:start + n] = sees
    return allowed & layout.valid[:, :, None]


def _within(allowed: torch.Tensor, layout: _Layout, window: int | None) -> torch.Tensor:
    """`allowed`, on a sliding layer only the keys less than `window` positions behind the
    query (HF's rule: kv > q - window); always a new tensor."""
    if window is None:
        return allowed.clone()
    distance = layout.positions[:, :, None] - layout.key_positions[:, None, :]
    return allowed & (distance < window)


def layer_types(config: Any) -> list[str]:
    """Each layer's attention kind, as transformers reads it: the config's `layer_types`, else
    every layer sliding if the config sets a window, else every layer full."""
    configured = getattr(config, "layer_types", None)
    if configured:
        return list(configured)
    kind = SLIDING if getattr(config, "sliding_window", None) else "full_attention"
    return [kind] * config.num_hidden_layers


def kv_shape(config: Any) -> tuple[int, int]:
    """(K/V heads, head dimension) of each layer's cache."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def _use_masked_attention(model: Any) -> None:
    implementation = model.config._attn_implementation
    if implementation not in MASKED_ATTENTION:
        log.info("%s: %s attention takes no 4D mask; the generic path runs it with sdpa", architecture_of(model),
                 implementation)
        model.set_attn_implementation("sdpa")
