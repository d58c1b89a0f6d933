"""A forward pass for Llama-architecture models (SmolLM2, Llama, Mistral-style) over the
Hugging Face module's own weights, with K/V in llmos's paged KV pool (drivers/kv_cache.py).

The pass is written with plain tensor functions over weights gathered once per layer, so
a step costs few operator calls: the query/key/value projections are one matmul, the
MLP's gate and up projections another, and the rotary embedding turns queries and keys
in one go. On CPUs the projection weights are reordered once into oneDNN's blocked
layout (what PyTorch's compiler does for frozen weights): a step's small-batch matmuls
then run about twice as fast as through `F.linear`. The engine keeps that copy beside
the HF module's own weights, which `model.generate` still uses (elsewhere, e.g. on CUDA,
the HF modules' weights become views into the fused ones, so nothing is held twice).
Every operation keeps HF's order and precision (norms in float32, rotary and attention
in the model's dtype), so greedy outputs match `model.generate`: token for token in
float32 (oneDNN's float32 sums differ from MKL's in the last bits only); in bfloat16 the
prefill is bitwise HF's, and decoding may round differently (see `_attention`).
K/V are never repeated per head. Decoding reads each sequence's blocks in place with the
compiled paged-attention kernel (drivers/paged.py) where it serves the model; prefilling,
scoring and decoding without the kernel gather the rows' blocks into a contiguous copy for
sdpa, which broadcasts K/V heads (`enable_gqa`) or folds a head's query group into its
query axis when decoding.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmos.drivers import paged, quant
from llmos.drivers.kv_cache import KVPool
from llmos.drivers.lora import AdapterSet, Selection
from llmos.kernel.blocks import BLOCK
from llmos.drivers.quant import Choice
from llmos.drivers.quant_cache import MeasuredChoice, QuantCache, Shape

NO_QUANT = Choice("none", 0, {})
_NO_SCALE = torch.empty(0)  # decode_layers' mark of a dense weight
# What "auto" may choose, the fastest measured: both pass bench/quality.py's gate on SmolLM2
# (perplexity within 5% of the unquantized model's; int4 with its int8 output projection).
AUTO_KINDS = ("int8", "int4")

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


def architecture_of(model: Any) -> str:
    return (getattr(model.config, "architectures", None) or [type(model).__name__])[0]


def runs_on_llama_engine(model: Any) -> bool:
    """Whether the llama engine runs `model`; every other causal LM takes the generic path
    (drivers/generic.py)."""
    return architecture_of(model) in SUPPORTED_ARCHITECTURES


@dataclass(frozen=True)
class Batch:
    """One forward pass over B sequences, each with its block table."""

    tables: torch.Tensor  # (B, W) int64 block ids, padded with the null block; W covers starts + lengths
    tokens: torch.Tensor  # (B, Q) input ids, right-padded
    starts: torch.Tensor  # (B,) position of each row's first input token
    lengths: torch.Tensor  # (B,) valid input tokens per row (1 when decoding)
    # Rows whose input is several continuations side by side (scoring options in one pass):
    # row index in the batch -> (rotary positions (Q,), which input tokens each input token
    # sees (Q, Q) bool). Their tokens still go to consecutive cache positions from `starts`,
    # and still see every cached position before it.
    trees: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # Each row's LoRA adapter (drivers/lora.py), None for the base model; empty: all the base.
    adapters: tuple[str | None, ...] = ()
    # A prompt pass (0: a decode pass): its rows compute as a prefill even one token long, with
    # the weights a pass of this many rows gets (the quantized kinds' row limits), at least its
    # own rows. The engine gives a prompt's extent, so a prompt's tail after a cached prefix is
    # computed as in the prompt's own pass and a greedy reply does not depend on the cache.
    weight_rows: int = 0


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's weights, fused where two projections read the same input."""

    attn_norm: torch.Tensor
    qkv: Projection  # outputs q (Hq*D), then k (Hkv*D), then v (Hkv*D)
    o: Projection
    mlp_norm: torch.Tensor
    gate_up: Projection  # outputs gate (I), then up (I)
    down: Projection
    act: Any


@dataclass(frozen=True)
class _Pass:
    """What every layer of one forward pass shares: positions, mask and cache indices."""

    bsz: int
    qlen: int
    decoding: bool  # one token per row, through the decode kernels (else computed as a prefill)
    weight_rows: int  # a prompt pass's rows to choose the weights by (Batch.weight_rows; 0: a decode pass)
    total: int  # keys attended over: 0..total-1
    cos: torch.Tensor  # (B, Q, 1, D)
    sin: torch.Tensor  # (B, Q, 1, D), sign-folded: rotate_half(x) * sin == swap_halves(x) * sin
    mask: torch.Tensor | None  # (B, 1, G, T) decoding, (B, 1, Q + query_pad, T) prefilling; None if all keys count
    query_pad: int  # rows a prompt pass adds to its queries for sdpa (`query_padding`), copies of the last
    blocks: torch.Tensor  # (N,) the block each valid input token's K/V goes to
    offsets: torch.Tensor  # (N,) and its offset in that block
    lens: torch.Tensor | None  # (B,) int32 keys each row attends when decoding with the kernel
    tables32: torch.Tensor | None  # (B, W) int32 block tables, for the kernel
    valid_index: torch.Tensor | None  # (N,) flat index of each valid token in (B*Q), None if all are
    lora: Selection | None  # the rows' adapters, None if every row runs the base model


def flash_attention_available(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def packing_available(device: str, dtype: torch.dtype) -> bool:
    """Whether this PyTorch build can prepack linear weights for oneDNN on this CPU."""
    if not device.startswith("cpu") or not torch.backends.mkldnn.is_available():
        return False
    if not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


# From this many rows on, the dense kernels sum each row in the same order whatever the rows
# (oneDNN's packed one-row kernel and MKL's float32 ones under four rows do not, at k = 1536).
ROWS_SUMMED_ALIKE = 4
# PyTorch's CPU flash attention cuts a pass's queries into blocks of 32 rows (64 from 192
# queries, 256 from 768: multiples of 32) and multiplies each block as one matrix, and a block
# of fewer than ROWS_SUMMED_ALIKE rows sums in another order: so a prompt's last rows came out
# other bits when its tail ran alone after a cached prefix than inside the prompt's own pass.
# Prompt passes pad their queries so that no block is that small (`query_padding`).
QUERY_BLOCK = 32


def query_padding(queries: int) -> int:
    """Rows to add to a prompt pass of `queries` queries so that its last query block, like
    every other, has at least ROWS_SUMMED_ALIKE rows."""
    last = queries % QUERY_BLOCK
    return ROWS_SUMMED_ALIKE - last if 0 < last < ROWS_SUMMED_ALIKE else 0


class Projection:
    """y = x W^T + b over one or more nn.Linear sharing an input (outputs concatenated),
    with W prepacked for oneDNN when `pack` is set, else through F.linear; and, with a
    quantization `choice`, W also in int8 or int4 for batches of at most `choice.max_rows`
    rows (decode steps of a few agents: drivers/quant.py), and in `choice.few` for batches of
    at most `choice.few_rows`."""

    def __init__(self, linears: list[nn.Linear], *, pack: bool, choice: Choice = NO_QUANT,
                 caches: Mapping[str, QuantCache] | None = None, name: str = "") -> None:
        biases = [lin.bias for lin in linears]
        if any(b is None for b in biases) and any(b is not None for b in biases):
            raise ValueError("projections that share an input must all have biases or none")
        weight = torch.cat([lin.weight.detach() for lin in linears]) if len(linears) > 1 else linears[0].weight.detach()
        self.bias = torch.cat([b.detach() for b in biases]) if biases[0] is not None else None
        self.in_features = weight.shape[1]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight) if pack else None
        self.weight = None if pack else weight
        self.small, self.max_rows = _quantized_weight(weight, choice.kind, choice.max_rows, caches, name)
        self.few, self.few_rows = _quantized_weight(weight, choice.few, choice.few_rows, caches, name)
        if not pack and len(linears) > 1:
            _share(linears, weight, self.bias)

    def __call__(self, x: torch.Tensor, rows: int = 0) -> torch.Tensor:
        """x W^T + b, with the weight that serves `rows` rows (at least x's own), as in a pass of
        that many rows."""
        own = x.numel() // x.shape[-1]
        weight = self.quantized_for(max(rows, own))
        if weight is not None:
            return self._quantized(weight, x)
        padded = min(rows, ROWS_SUMMED_ALIKE)
        if own < padded:  # the few-row kernels sum in another order than the pass's own did
            flat = x.reshape(own, -1)
            y = self.dense(torch.cat([flat, flat.new_zeros(padded - own, flat.shape[1])]))[:own]
            return y.view(*x.shape[:-1], -1)
        return self.dense(x)

    def quantized_for(self, rows: int) -> quant.QuantizedWeight | None:
        """The quantized weight that serves a batch of `rows` rows; None: the dense one."""
        if self.few is not None and rows <= self.few_rows:
            return self.few
        if self.small is not None and rows <= self.max_rows:
            return self.small
        return None

    def limit_rows(self, measured: dict[tuple[str, int, int], int], dtype: torch.dtype, floor: int) -> None:
        """Serve as many rows quantized as the kernel beats dense at, for this weight's shape
        (measured once per shape, kept in `measured`), and at least `floor`."""
        if self.small is None:
            return
        shape = (self.small.kind, self.small.out_features, self.in_features)
        if shape not in measured:
            small = quant.FromMemory(lambda: [quant.quantized_link(self.small)])  # type: ignore[arg-type]
            measured[shape] = quant.row_limit(small, quant.FromMemory(self._dense_link), self.in_features, dtype)[0]
        self.max_rows = max(measured[shape], floor)

    def _dense_link(self) -> list[quant.Link]:
        """A copy of the dense weight (memory of its own), as a trial chain of one matmul."""
        dense = self.packed if self.packed is not None else self.weight
        assert dense is not None
        matmul = _packed_matmul(dense.clone()) if self.packed is not None else _dense_matmul(dense.clone(), pack=False)
        return [quant.Link(matmul, self.in_features, dense.shape[0] * self.in_features * dense.element_size())]

    @property
    def dense_operands(self) -> list[torch.Tensor]:
        """The dense weight as `decode_layers` takes it: (packed or plain weight, no scale)."""
        return [self.packed if self.packed is not None else self.weight, _NO_SCALE]

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def _quantized(self, weight: quant.QuantizedWeight, x: torch.Tensor) -> torch.Tensor:
        y = weight(x.reshape(-1, x.shape[-1]))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*x.shape[:-1], weight.out_features)


def _dense_matmul(weight: torch.Tensor, pack: bool) -> quant.Matmul:
    """x W^T as the engine runs it (prepacked for oneDNN where `pack`), without a bias."""
    if pack:
        return _packed_matmul(torch.ops.mkldnn._reorder_linear_weight(weight))
    return lambda x: F.linear(x, weight)


def _packed_matmul(packed: torch.Tensor) -> quant.Matmul:
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def _quantized_weight(weight: torch.Tensor, kind: str, rows: int, caches: Mapping[str, QuantCache] | None,
                      name: str) -> tuple[quant.QuantizedWeight | None, int]:
    """`weight` in `kind` (read from its cache, as `name`, when that holds it) and the rows it
    serves; (None, 0) for "none" or a weight `kind` cannot take."""
    if kind == "none" or not quant.fits(kind, weight):
        return None, 0
    cache = (caches or {}).get(kind)
    return (cache.weight(name, weight) if cache is not None else quant.quantize(weight, kind)), rows


def _share(linears: list[nn.Linear], weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Make each module's parameters views into the fused tensors, so the model holds one copy."""
    first = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(weight[first:first + rows], requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias[first:first + rows], requires_grad=False)
        first += rows


def _gather_layer(layer: Any, pack: bool, choice: Choice, caches: Mapping[str, QuantCache] | None = None,
                  index: int = 0) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp

    def projection(linears: list[nn.Linear], part: str) -> Projection:
        return Projection(linears, pack=pack, choice=choice, caches=caches, name=f"layers.{index}.{part}")

    return _Layer(attn_norm=layer.input_layernorm.weight,
                  qkv=projection([attn.q_proj, attn.k_proj, attn.v_proj], "qkv"), o=projection([attn.o_proj], "o"),
                  mlp_norm=layer.post_attention_layernorm.weight,
                  gate_up=projection([mlp.gate_proj, mlp.up_proj], "gate_up"), down=projection([mlp.down_proj], "down"),
                  act=mlp.act_fn)


def _for_lm_head(choice: Choice) -> Choice:
    """The output projection takes int8 where the layers take int4: every logit comes from it,
    and in int4 it alone turns answers (as llama.cpp's Q4_K_M keeps it at 6 bits)."""
    return Choice("int8" if choice.kind == "int4" else choice.kind, choice.max_rows, choice.measured)


def _model_folder(model: Any) -> Path | None:
    """The local folder the model was loaded from, where its quantized weights are cached."""
    if getattr(model, "folder", None) is not None:  # read by drivers/llama_checkpoint.py
        return Path(model.folder)
    name = str(getattr(model.config, "_name_or_path", "") or "")  # "" for a model built in memory
    return Path(name) if name and Path(name).is_dir() else None


def quantizes(model: Any, wanted: str) -> bool:
    """Whether `wanted` quantizes `model` at all: only on the CPU."""
    return wanted != "none" and str(model.device).startswith("cpu")


def choose_quantization(model: Any, wanted: str, pack: bool, kept: MeasuredChoice | None = None) -> Choice:
    """What `wanted` ("none", "int8", "int4" or "auto") means for `model` here: "auto" races
    the kinds in AUTO_KINDS against dense through the model's MLP (`quant.measure`) and takes
    the one that wins up to the most rows (and another for the fewest, where it beats that);
    a named kind is measured the same way for its row limit, and kept (at one row) even if it
    does not win. Only on the CPU. What `kept` holds from an earlier load is taken as it is."""
    if not quantizes(model, wanted):
        return NO_QUANT
    if kept is not None and kept.choice is not None:
        return kept.choice
    mlp = model.model.layers[0].mlp
    gate_up = torch.cat([mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()])
    kinds = AUTO_KINDS if wanted == "auto" else (wanted,)
    measured = quant.measure([gate_up, mlp.down_proj.weight.detach()], lambda w: _dense_matmul(w, pack), kinds,
                             model.dtype)
    if wanted != "auto" and measured.kind == "none":  # asked for: kept for single rows at least
        return Choice(wanted, 1, measured.measured)
    return measured


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [x2, x1] on the last axis; with a sign-folded sin this is rotate_half."""
    *lead, dim = x.shape
    return x.view(*lead, 2, dim // 2).flip(-2).view(*lead, dim)


class LlamaRunner:
    def __init__(self, model: Any, cache_factory: Any, *, flash: bool = False, quantization: str = "none") -> None:
        arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"the llmos engine runs {SUPPORTED_ARCHITECTURES}, not {arch}")
        cfg = model.config
        self.model = model
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.group = self.heads // self.kv_heads
        self.scale = self.head_dim**-0.5
        self.eps = cfg.rms_norm_eps
        self.packed = packing_available(str(model.device), model.dtype)
        kept = (MeasuredChoice(_model_folder(model), quantization, model.dtype, self.packed)
                if quantizes(model, quantization) else None)
        self.quantization = choose_quantization(model, quantization, self.packed, kept)
        caches = {kind: QuantCache(_model_folder(model), kind, model.dtype) for kind in
                  {self.quantization.kind, self.quantization.few, _for_lm_head(self.quantization).kind} - {"none"}}
        self.layers = [_gather_layer(layer, self.packed, self.quantization, caches, i)
                       for i, layer in enumerate(model.model.layers)]
        limits = self._limit_rows(model.dtype, floor=0 if quantization == "auto" else 1,
                                  kept=kept.limits if kept is not None else {})
        if kept is not None:
            kept.save(self.quantization, limits)
        head = _for_lm_head(self.quantization)
        self.lm_head = Projection([model.lm_head], pack=self.packed, choice=head, caches=caches, name="lm_head")
        for cache in caches.values():
            cache.save()
        self.adapters = self._adapter_set(cfg, str(model.device))
        device, dtype = str(model.device), model.dtype
        self.paged_decode = None  # the compiled kernel, where it serves this model here
        # Its fused norm, rotary and K/V store, where the weights are quantized: there no
        # pass is promised bitwise equal to HF's (they round once where HF rounds twice).
        self.fused: Any = None
        if paged.supports(self.heads, self.kv_heads, self.head_dim, dtype, device):
            self.paged_decode = paged.kernel().decode  # type: ignore[union-attr]
            if self.quantization.kind != "none":
                self.fused = paged.kernel()
        self.cache: KVPool = cache_factory(len(self.layers), self.kv_heads, self.head_dim, self.kv_dtype)
        if self.paged_decode is not None:
            self.cache.gather_kernel = paged.kernel().gather_kv  # type: ignore[union-attr]
        # Its SiLU and product in one call, where the MLP's activation is SiLU: every pass on the
        # compiled path runs this one (decode_layers does too, so both paths agree bitwise).
        silu = getattr(cfg, "hidden_act", None) == "silu"
        self.silu_mul: Any = self.fused.silu_mul if self.fused is not None and silu else None
        # Decode passes run every layer in one compiled call where all of them can (SiLU MLPs).
        self.stackable = self.silu_mul is not None
        self._stacks: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]] | None] = {}
        # FlashAttention serves decode passes on CUDA (never run on the CPU-only machines we
        # develop on); prefill and every CPU pass use PyTorch's sdpa.
        self.flash_decode = None
        if flash:
            from flash_attn import flash_attn_with_kvcache

            self.flash_decode = flash_attn_with_kvcache

    @property
    def kv_dtype(self) -> torch.dtype:
        """What K/V are kept in: bfloat16 under a float32 model on the fused (quantized) path,
        whose kernels widen them as they read (half the bytes: decode attention over 16 agents'
        short contexts took 6.3 ms a step from float32, 3.5 from bfloat16, and a 2k-token
        context's K/V shrinks from 94 to 47 MB); else the model's dtype, so the unquantized
        path stays bitwise HF's."""
        dtype = self.model.dtype
        return torch.bfloat16 if self.fused is not None and dtype == torch.float32 else dtype

    def _limit_rows(self, dtype: torch.dtype, floor: int, kept: Mapping[Shape, int]) -> dict[Shape, int]:
        """Each layer projection's own row limit: how far the int8 kernel leads oneDNN's float32
        differs by shape (on a 2-core Zen 3 at 64 rows it won on some shapes and lost on
        others). The MLP's was measured choosing the kind (self.quantization.max_rows); the
        lm_head keeps it, not measured again (~0.5 s of a load): in microbenchmarks its lead
        was about the MLP's or larger up to 32 rows, its weights (the vocabulary's) coming
        from memory. A shape `kept` from an earlier load is not measured again. Returns the
        limits by shape."""
        mlp = self.layers[0].gate_up if self.layers else None
        measured: dict[Shape, int] = dict(kept)
        if mlp is not None and mlp.small is not None:
            measured[(mlp.small.kind, mlp.small.out_features, mlp.in_features)] = self.quantization.max_rows
        for layer in self.layers:
            for projection in (layer.qkv, layer.o, layer.gate_up, layer.down):
                projection.limit_rows(measured, dtype, floor)
        return measured

    def _adapter_set(self, cfg: Any, device: str) -> AdapterSet:
        hidden, inner = cfg.hidden_size, cfg.intermediate_size
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        modules = {"qkv": [q, kv, kv], "o": [hidden], "gate_up": [inner, inner], "down": [hidden]}
        inputs = {"qkv": hidden, "o": q, "gate_up": hidden, "down": inner}
        return AdapterSet(layers=len(self.layers), widths={p: (inputs[p], sum(w)) for p, w in modules.items()},
                          module_widths=modules, device=device,
                          kernel=paged.lora_kernel(self.model.dtype, device))

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits (B, vocab) at each row's last valid input token; K/V of valid tokens cached."""
        return self.forward_spans(batch, ())[0]

    @torch.inference_mode()
    def forward_spans(self, batch: Batch, spans: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`forward`'s logits, and for each span (row in the batch, n) the logits (n, vocab)
        at that row's first n positions: what scoring a continuation needs."""
        tokens = batch.tokens
        hidden = self.model.model.embed_tokens(tokens)  # (B, Q, H)
        shared = self._prepare(batch, hidden)
        stacked = self._stacked_operands(shared)
        if stacked is not None:  # every layer in one call: the same operators as the loop below
            norms, weights = stacked
            self.fused.decode_layers(hidden.view(shared.bsz, -1), norms, weights, self.eps,
                                     shared.cos.view(shared.bsz, -1), shared.sin.view(shared.bsz, -1), self.cache.k,
                                     self.cache.v, shared.blocks, shared.offsets, shared.tables32, shared.lens,
                                     self.heads, self.scale)
        else:
            for index, layer in enumerate(self.layers):
                hidden += self._attention(index, layer, self._norm(hidden, layer.attn_norm), shared, batch)
                hidden += self._mlp(index, layer, self._norm(hidden, layer.mlp_norm), shared)
        spanned = [self.lm_head(self.model.model.norm(hidden[row, :n])).float() for row, n in spans]
        last = (batch.lengths - 1).clamp(min=0)
        final = self.model.model.norm(hidden[torch.arange(shared.bsz), last])  # (B, H)
        return self.lm_head(final).float(), spanned

    def _stacked_operands(self, shared: _Pass) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The norms and weights `decode_layers` takes for this pass, where it serves it: a
        decode pass on the compiled path, no adapters, no biases (kept by rows: which weight
        serves how many rows is fixed at load)."""
        if not self.stackable or not shared.decoding or shared.lora is not None or shared.lens is None:
            return None
        if shared.bsz not in self._stacks:
            self._stacks[shared.bsz] = self._stack_for(shared.bsz)
        return self._stacks[shared.bsz]

    def _stack_for(self, rows: int) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        norms: list[torch.Tensor] = []
        weights: list[torch.Tensor] = []
        for layer in self.layers:
            norms += [layer.attn_norm, layer.mlp_norm]
            for projection in (layer.qkv, layer.o, layer.gate_up, layer.down):
                weight = projection.quantized_for(rows)
                if projection.bias is not None or (weight is not None and not weight.compiled):
                    return None
                weights += weight.operands if weight is not None else projection.dense_operands
        return norms, weights

    def _prepare(self, batch: Batch, hidden: torch.Tensor) -> _Pass:
        bsz, qlen = batch.tokens.shape
        offsets = torch.arange(qlen, device=hidden.device)
        positions = batch.starts[:, None] + offsets[None, :]  # (B, Q): cache positions
        valid = offsets[None, :] < batch.lengths[:, None]  # (B, Q)
        total = int((batch.starts + batch.lengths).max())
        rotary = positions.clone() if batch.trees else positions  # a scored row's options restart their positions
        for row, (tree_positions, _) in batch.trees.items():
            rotary[row, : len(tree_positions)] = tree_positions
        cos, sin = self.model.model.rotary_emb(hidden, rotary)  # (B, Q, D)
        half = self.head_dim // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        all_valid = qlen == 1  # one token per row, every one valid
        decoding = qlen == 1 and not batch.weight_rows
        valid_index = None if all_valid else valid.reshape(-1).nonzero().squeeze(1)
        in_place = decoding and (self.paged_decode is not None or self.flash_decode is not None)
        uniform = bool((batch.starts + batch.lengths == total).all()) and decoding
        mask = None if uniform or in_place else self._mask(positions, valid, total, decoding)
        for row, (_, sees) in batch.trees.items():  # (B, 1, Q, T): a prefill pass's mask
            start, n = int(batch.starts[row]), sees.shape[0]
            if n > 1:  # one token sees itself under the causal mask already
                mask[row, 0, :n, start:start + n] = sees
        query_pad = 0 if decoding else query_padding(qlen)
        if query_pad:
            mask = torch.cat([mask, mask[:, :, -1:].expand(-1, -1, query_pad, -1)], dim=2)
        slots = positions.clamp(max=batch.tables.shape[1] * BLOCK - 1)  # padding may point past the table
        blocks = batch.tables.gather(1, slots // BLOCK).reshape(-1)
        offsets = (slots % BLOCK).reshape(-1)
        lens = (batch.starts + batch.lengths).to(torch.int32) if in_place else None
        tables32 = batch.tables.to(torch.int32) if in_place else None
        return _Pass(bsz=bsz, qlen=qlen, decoding=decoding, weight_rows=batch.weight_rows, total=total,
                     cos=cos.unsqueeze(2), sin=sin.unsqueeze(2), mask=mask, query_pad=query_pad,
                     blocks=blocks if all_valid else blocks[valid_index],
                     offsets=offsets if all_valid else offsets[valid_index],
                     lens=lens, tables32=tables32, valid_index=valid_index,
                     lora=self.adapters.selection(batch.adapters, qlen) if batch.adapters else None)

    def _mask(self, positions: torch.Tensor, valid: torch.Tensor, total: int, decoding: bool) -> torch.Tensor:
        keys = torch.arange(total, device=positions.device)
        allowed = keys[None, None, :] <= positions[:, :, None]  # causal: (B, Q, T)
        allowed &= valid[:, :, None]
        allowed[:, :, 0] |= ~valid  # padding queries see one key, so softmax stays finite
        if decoding:  # decoding folds the query group into the query axis
            return allowed.unsqueeze(1).expand(-1, 1, self.group, -1)  # (B, 1, G, T)
        return allowed.unsqueeze(1)  # (B, 1, Q, T)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """LlamaRMSNorm in its precision: statistics in float32, scaled in the model's dtype
        (F.rms_norm of the float32 upcast is bitwise HF's x * rsqrt(mean(x²) + eps))."""
        if self.fused is not None:  # the same arithmetic in one call
            return self.fused.rms_norm(x, weight, self.eps)
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def _project(self, projection: Projection, index: int, part: str, x: torch.Tensor, shared: _Pass) -> torch.Tensor:
        """The layer's projection `part` of x, with each row's LoRA adapter added."""
        y = projection(x, shared.weight_rows)
        return y if shared.lora is None else self.adapters.add_to(y, index, part, x, shared.lora)

    def _mlp(self, index: int, layer: _Layer, x: torch.Tensor, shared: _Pass) -> torch.Tensor:
        gate_up = self._project(layer.gate_up, index, "gate_up", x, shared)
        if self.silu_mul is not None:
            return self._project(layer.down, index, "down", self.silu_mul(gate_up.contiguous()), shared)
        gate, up = gate_up.chunk(2, dim=-1)
        return self._project(layer.down, index, "down", layer.act(gate) * up, shared)

    def _attention(self, index: int, layer: _Layer, x: torch.Tensor, shared: _Pass, batch: Batch) -> torch.Tensor:
        bsz, qlen, hq, hkv, dim = shared.bsz, shared.qlen, self.heads, self.kv_heads, self.head_dim
        qkv = self._project(layer.qkv, index, "qkv", x, shared).view(bsz, qlen, hq + 2 * hkv, dim)
        if self.fused is not None and shared.decoding:  # rotary, K/V store and paged attention: two calls
            q = self.fused.rope_store(qkv.view(bsz, hq + 2 * hkv, dim), shared.cos.view(bsz, dim),
                                      shared.sin.view(bsz, dim), self.cache.k[index], self.cache.v[index],
                                      shared.blocks, shared.offsets, hq)
            out = self.paged_decode(q, self.cache.k[index], self.cache.v[index], shared.tables32, shared.lens, self.scale)
            return self._project(layer.o, index, "o", out.reshape(bsz, 1, hq * dim), shared)
        qk = qkv[:, :, : hq + hkv]
        qk = qk * shared.cos + _swap_halves(qk) * shared.sin  # rotary, queries and keys at once
        q, k, v = qk[:, :, :hq], qk[:, :, hq:], qkv[:, :, hq + hkv:]  # (B, Q, heads, D)
        self._store(index, k, v, shared)
        if self.flash_decode is not None and shared.decoding:
            out = self._flash_decode(index, q, batch, shared.total)
            return self._project(layer.o, index, "o", out.reshape(bsz, 1, -1), shared)
        if self.paged_decode is not None and shared.decoding:  # in place, no copy of the blocks
            out = self.paged_decode(q.reshape(bsz, hq, dim).contiguous(), self.cache.k[index], self.cache.v[index],
                                    shared.tables32, shared.lens, self.scale)
            return self._project(layer.o, index, "o", out.reshape(bsz, 1, hq * dim), shared)
        keys, values = self.cache.gather(index, batch.tables, shared.total)  # (B, Hkv, T, D)
        if shared.decoding:
            # Decoding: each K/V head's query group becomes its query axis, (B, Hkv, G, D)
            # (head h = kv*G + g, as in HF's repeat_kv): several times faster than enable_gqa.
            out = F.scaled_dot_product_attention(q.reshape(bsz, hkv, self.group, dim), keys, values,
                                                 attn_mask=shared.mask, scale=self.scale)
            return self._project(layer.o, index, "o", out.reshape(bsz, 1, hq * dim), shared)
        # Prefilling: HF's layout, so the kernel blocks the queries as model.generate's does
        # and the rounding, hence greedy outputs in bfloat16, match it; padded where the last
        # block would be too small to sum as the others (`query_padding`: there a prompt's
        # last rows may differ from HF's in their last bits, as they do between HF's own passes).
        queries = q.transpose(1, 2)  # (B, Hq, Q, D)
        if shared.query_pad:
            queries = torch.cat([queries, queries[:, :, -1:].expand(-1, -1, shared.query_pad, -1)], dim=2)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=shared.mask,
                                             scale=self.scale, enable_gqa=True)[:, :, :qlen]
        return self._project(layer.o, index, "o", out.transpose(1, 2).reshape(bsz, qlen, hq * dim), shared)

    def _store(self, index: int, k: torch.Tensor, v: torch.Tensor, shared: _Pass) -> None:
        """Write the valid tokens' K/V (B, Q, Hkv, D) into the cache."""
        k, v = k.reshape(-1, self.kv_heads, self.head_dim), v.reshape(-1, self.kv_heads, self.head_dim)
        if shared.valid_index is not None:
            k, v = k[shared.valid_index], v[shared.valid_index]
        self.cache.write(index, shared.blocks, shared.offsets, k, v)

    def _flash_decode(self, index: int, q: torch.Tensor, batch: Batch, total: int) -> torch.Tensor:
        """One query per row against that row's cached keys: (B, 1, Hq, D). CUDA only."""
        keys, values = self.cache.gather(index, batch.tables, total)  # (B, Hkv, T, D)
        return self.flash_decode(q, keys.transpose(1, 2), values.transpose(1, 2),
                                 cache_seqlens=(batch.starts + batch.lengths).to(torch.int32),
                                 softmax_scale=self.scale, causal=False)
