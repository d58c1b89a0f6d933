"""LoRA adapters served side by side in one batch (the idea of S-LoRA and Punica): every row
of a forward pass may run with its own adapter of the same base model, so ten agents on ten
fine-tunes cost one model's memory and one pass a step.

An adapter is a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors, as
`peft`'s save_pretrained writes it and `llmos finetune` makes it), read without peft: the
config through pydantic, the tensors through safetensors. For each of the engine's fused
projections (qkv, o, gate_up, down; drivers/llama.py), the loaded adapters' low-rank factors
are concatenated once: A_cat (sum of ranks, in) and B_cat (out, sum of ranks), each adapter in
its own column range, its scaling folded into B, and a fused projection's parts (q, k and v)
block-diagonal in B. On the CPU a pass costs one call of the compiled `lora_add` per
projection (drivers/paged_attention.cpp, Punica's BGMV): each token row multiplies by its own
adapter's columns of A_cat and B_cat^T only and adds the result to the projection in place;
rows without an adapter are left alone. Without the kernel, two thin PyTorch matmuls per
projection: x A_cat^T, masked so each row keeps only its adapter's columns, times B_cat^T (a
pass where every row has the same adapter uses its columns alone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from llmos.kernel.errors import ConfigError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# The engine's fused projections and the HF modules each one concatenates, in output order.
PARTS: dict[str, tuple[str, ...]] = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
                                     "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}
MODULES = {module: part for part, modules in PARTS.items() for module in modules}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class AdapterError(ConfigError):
    """An adapter folder this engine cannot serve (bad config, unsupported LoRA variant, wrong base)."""


class LoraConfig(BaseModel):
    """What serving needs of PEFT's adapter_config.json; the rest of the file is ignored, but
    anything that changes the computation beyond plain LoRA is refused by `check`."""

    model_config = ConfigDict(extra="ignore")

    peft_type: str = "LORA"
    r: int
    lora_alpha: float
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    use_dora: bool = False
    bias: str = "none"
    fan_in_fan_out: bool = False
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    base_model_name_or_path: str | None = None

    def check(self, folder: Path) -> None:
        refusals = {"peft_type": self.peft_type.upper() != "LORA", "use_dora": self.use_dora,
                    "bias": self.bias != "none", "fan_in_fan_out": self.fan_in_fan_out,
                    "modules_to_save": bool(self.modules_to_save),
                    "rank_pattern/alpha_pattern": bool(self.rank_pattern or self.alpha_pattern)}
        refused = [name for name, bad in refusals.items() if bad]
        if refused:
            raise AdapterError(f"{folder / CONFIG_FILE}: the engine serves plain LoRA; this adapter sets {', '.join(refused)}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (self.r ** 0.5 if self.use_rslora else self.r)


@dataclass(frozen=True)
class Adapter:
    """One adapter's factors: (layer, HF module name) -> (A (r, in), B (out, r) * scaling)."""

    name: str
    folder: Path
    factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

    @property
    def modules(self) -> set[str]:
        return {module for _, module in self.factors}


def read_adapter(name: str, folder: Path, *, dtype: torch.dtype, layers: int) -> Adapter:
    """Read and check a PEFT LoRA folder. Blocking (reads the weights)."""
    from safetensors.torch import load_file

    config = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise AdapterError(f"{folder}: no {WEIGHTS_FILE} (the engine reads safetensors adapters only)")
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own errors for a damaged file
        raise AdapterError(f"{weights_path}: cannot read it ({exc})") from None
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.search(key)
        if match is None or match[2] not in MODULES:
            raise AdapterError(f"{weights_path}: {key!r} adapts a module the engine does not serve with LoRA "
                               f"(it serves {', '.join(MODULES)})")
        layer = int(match[1])
        if layer >= layers:
            raise AdapterError(f"{weights_path}: {key!r} is for layer {layer}; the base model has {layers}")
        pairs.setdefault((layer, match[2]), {})[match[3]] = tensor
    factors = {}
    for where, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{weights_path}: layer {where[0]} {where[1]} has lora_{''.join(pair)} only")
        a, b = pair["A"], pair["B"]
        if a.shape[0] != b.shape[1]:
            raise AdapterError(f"{weights_path}: layer {where[0]} {where[1]}: lora_A {tuple(a.shape)} and lora_B "
                               f"{tuple(b.shape)} do not chain")
        factors[where] = (a.to(dtype), (b.float() * config.scaling).to(dtype))
    if not factors:
        raise AdapterError(f"{weights_path}: holds no LoRA weights")
    return Adapter(name=name, folder=folder, factors=factors)


def read_config(folder: Path) -> LoraConfig:
    """The folder's adapter config, checked (AdapterError: not an adapter the engine serves)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise AdapterError(f"{folder}: not a PEFT adapter folder (it has no {CONFIG_FILE})")
    try:
        config = LoraConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise AdapterError(f"{path}: not a LoRA adapter config ({exc})") from None
    config.check(folder)
    return config


class _LowRank:
    """y + x A^T B^T through PyTorch's matmuls, each row's columns kept by `mask` (rows *
    tokens, R) when given: where the compiled kernel is not (no compiler, not a CPU). A^T and
    B^T are laid out once, contiguous: a strided view costs a copy in every small matmul."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:  # a (R, in), b (out, R)
        self.a_t, self.b_t = a.T.contiguous(), b.T.contiguous()

    def add_to(self, y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        low = x.reshape(-1, x.shape[-1]).to(self.a_t.dtype) @ self.a_t
        if mask is not None:
            low = low * mask
        return y + (low @ self.b_t).view(y.shape).to(y.dtype)


@dataclass
class _Fused:
    """One layer's fused projection for every loaded adapter: A_cat (R, in) and B_cat^T (R, out),
    for the compiled kernel, which reads each row's own columns; or, without it, the PyTorch
    products of them all (masked) and of each adapter's slice (a pass of one adapter)."""

    a: torch.Tensor  # (R, in)
    b: torch.Tensor  # (out, R)
    columns: dict[str, slice]
    kernel: Any = None  # torch.ops.llmos_paged, or None
    bt: torch.Tensor | None = field(init=False, default=None)
    whole: _LowRank | None = field(init=False, default=None)
    singles: dict[str, _LowRank] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.kernel is not None:
            self.bt = self.b.T.contiguous()
            return
        self.whole = _LowRank(self.a, self.b)
        self.singles = {name: _LowRank(self.a[cols].contiguous(), self.b[:, cols].contiguous())
                        for name, cols in self.columns.items()}


@dataclass
class AdapterSet:
    """The adapters a runner serves, concatenated per (layer, fused projection)."""

    layers: int
    widths: dict[str, tuple[int, int]]  # part -> (in features, out features of each module, concatenated)
    module_widths: dict[str, list[int]]  # part -> out features of each of its modules
    device: str = "cpu"
    kernel: Any = None  # the compiled operators (drivers/paged.py) where they serve this dtype and device
    adapters: dict[str, Adapter] = field(default_factory=dict)
    fused: dict[tuple[int, str], _Fused] = field(default_factory=dict)
    # Column range of each adapter in each part (the same in every layer: ranks are padded).
    columns: dict[str, dict[str, slice]] = field(default_factory=dict)

    def add(self, adapter: Adapter) -> None:
        self._check_shapes(adapter)
        self.adapters[adapter.name] = adapter
        self._rebuild()

    def remove(self, name: str) -> None:
        self.adapters.pop(name, None)
        self._rebuild()

    def _check_shapes(self, adapter: Adapter) -> None:
        for (layer, module), (a, b) in adapter.factors.items():
            part = MODULES[module]
            index = PARTS[part].index(module)
            if a.shape[1] != self.widths[part][0] or b.shape[0] != self.module_widths[part][index]:
                raise AdapterError(f"{adapter.folder}: layer {layer} {module} is {b.shape[0]}x{a.shape[1]}; the base "
                                   f"model's is {self.module_widths[part][index]}x{self.widths[part][0]}: "
                                   "an adapter of another model")

    def _rebuild(self) -> None:
        """Lay every adapter out anew (loading is rare; a pass reads only the result)."""
        self.fused.clear()
        self.columns = {part: {} for part in PARTS}
        for part in PARTS:
            at = 0
            for name, adapter in self.adapters.items():
                rank = _rank(adapter, part)
                if rank:
                    self.columns[part][name] = slice(at, at + rank)
                    at += rank
            if at:
                for layer in range(self.layers):
                    self.fused[(layer, part)] = self._fuse(layer, part, at)

    def _fuse(self, layer: int, part: str, total: int) -> _Fused:
        first = next(iter(self.adapters.values())).factors
        dtype = next(iter(first.values()))[0].dtype
        a = torch.zeros(total, self.widths[part][0], dtype=dtype, device=self.device)
        b = torch.zeros(self.widths[part][1], total, dtype=dtype, device=self.device)
        offsets = [0]
        for width in self.module_widths[part]:
            offsets.append(offsets[-1] + width)
        for name, cols in self.columns[part].items():
            at = cols.start
            for index, module in enumerate(PARTS[part]):
                factors = self.adapters[name].factors.get((layer, module))
                if factors is None:
                    continue
                fa, fb = factors
                rank = fa.shape[0]
                a[at:at + rank] = fa
                b[offsets[index]:offsets[index + 1], at:at + rank] = fb
                at += rank
        return _Fused(a=a, b=b, columns=self.columns[part], kernel=self.kernel)

    # -- a pass --------------------------------------------------------------------------------------
    def selection(self, row_adapters: tuple[str | None, ...], tokens_per_row: int) -> Selection | None:
        """What a pass over rows with these adapters needs (None: no row has one)."""
        if not any(row_adapters):
            return None
        unknown = {name for name in row_adapters if name is not None and name not in self.adapters}
        if unknown:
            raise AdapterError(f"adapter(s) not loaded: {', '.join(sorted(unknown))}")
        if self.kernel is not None:
            return Selection(single=None, masks={}, spans=self._spans(row_adapters, tokens_per_row))
        if len(set(row_adapters)) == 1:  # every row the same adapter: its columns, no mask
            return Selection(single=row_adapters[0], masks={})
        return Selection(single=None, masks=self._masks(row_adapters, tokens_per_row))

    def _spans(self, row_adapters: tuple[str | None, ...], tokens_per_row: int) -> dict[str, tuple[torch.Tensor, ...]]:
        """part -> (start, count) of each input token's adapter columns, int32 (count 0: none)."""
        spans = {}
        for part, columns in self.columns.items():
            if columns:
                start = [columns[n].start if n in columns else 0 for n in row_adapters]
                count = [columns[n].stop - columns[n].start if n in columns else 0 for n in row_adapters]
                spans[part] = tuple(torch.tensor(v, dtype=torch.int32).repeat_interleave(tokens_per_row)
                                    for v in (start, count))
        return spans

    def _masks(self, row_adapters: tuple[str | None, ...], tokens_per_row: int) -> dict[str, torch.Tensor]:
        """part -> (rows * tokens, R): 1 in each input token's adapter columns."""
        masks = {}
        for part, columns in self.columns.items():
            if not columns:
                continue
            total = max(c.stop for c in columns.values())
            mask = torch.zeros(len(row_adapters), total, dtype=next(iter(self.fused.values())).a.dtype,
                               device=self.device)
            for row, name in enumerate(row_adapters):
                if name in columns:
                    mask[row, columns[name]] = 1
            masks[part] = mask.repeat_interleave(tokens_per_row, dim=0)  # one row of the mask per input token
        return masks

    def add_to(self, y: torch.Tensor, layer: int, part: str, x: torch.Tensor, selection: Selection) -> torch.Tensor:
        """y, the output of projection `part` of `layer` for input x (..., in), with what the
        pass's adapters add to it (in place, with the kernel)."""
        fused = self.fused.get((layer, part))
        if fused is None:
            return y
        if fused.bt is not None:
            start, count = selection.spans[part]
            fused.kernel.lora_add(y, x.contiguous(), fused.a, fused.bt, start, count)
            return y
        if selection.single is not None:
            single = fused.singles.get(selection.single)
            return y if single is None else single.add_to(y, x, None)  # None: this adapter leaves the part alone
        assert fused.whole is not None
        return fused.whole.add_to(y, x, selection.masks[part])

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": a.name, "folder": str(a.folder), "modules": sorted(a.modules)} for a in self.adapters.values()]


@dataclass(frozen=True)
class Selection:
    single: str | None  # the one adapter of every row, or None for a mix (or for the kernel)
    masks: dict[str, torch.Tensor]  # for a mix: part -> (rows * tokens, R) 0/1, each row's columns
    spans: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)  # for the kernel: see `_spans`


def _rank(adapter: Adapter, part: str) -> int:
    """Columns the adapter takes in `part`: its largest summed rank over the layers (padded with zeros)."""
    ranks: dict[int, int] = {}
    for (layer, module), (a, _) in adapter.factors.items():
        if MODULES[module] == part:
            ranks[layer] = ranks.get(layer, 0) + a.shape[0]
    return max(ranks.values(), default=0)
