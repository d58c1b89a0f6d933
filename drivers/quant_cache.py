"""What a model's quantization costs to make, kept on disk beside its weights
(MODEL/llmos-quant/), so a later load does neither again:

- `QuantCache`: the quantized weights themselves (quantizing SmolLM2 in int4 took 0.6 s of
  a cold start).
- `MeasuredChoice`: what timing the kernels against dense chose (drivers/quant.py's
  `measure` and `row_limit`): which kind serves which batch sizes, and each projection
  shape's row limit. Measuring took ~1 s of every load, under load more (every test process
  that loads the model paid it), and on a shared host a noisy trial could choose differently
  from one load to the next; once kept, the choice holds until the machine, PyTorch, the
  threads or the weights change. `llmos models measure NAME` measures again.

A key in each file's name says what it was made for; a file made for anything else is
replaced. A folder that cannot be written is only not cached: nothing of this is fatal.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError
from safetensors.torch import load_file, save_file

from llmos.drivers.compute import cpu_flags, cpu_model
from llmos.drivers.model_info import CHOICE_PREFIX, QUANT_FOLDER
from llmos.drivers.quant import INT4_GROUP, METHOD, Choice, QuantizedWeight, compiled_int4, quantize

log = logging.getLogger(__name__)
CACHE_FOLDER = QUANT_FOLDER  # beside a model's weights

Shape = tuple[str, int, int]  # (kind, out_features, in_features): a projection's row limit is measured per shape


class QuantCache:
    """A model's quantized weights in one kind (MODEL/llmos-quant/KEY.safetensors). KEY names
    the kind, the source dtype, PyTorch's version, the CPU's vector width (which the packed
    int4 layout may depend on), and the model's weight files (size and time: weights replaced
    in place are quantized again)."""

    def __init__(self, model_folder: Path | None, kind: str, dtype: torch.dtype) -> None:
        self.kind = kind
        self.path = (None if model_folder is None else
                     model_folder / CACHE_FOLDER / f"{_weights_key(kind, dtype, model_folder)}.safetensors")
        self.tensors: dict[str, torch.Tensor] = {}
        self.made = 0  # weights quantized now rather than read
        if self.path is not None and self.path.is_file():
            try:
                self.tensors = load_file(str(self.path))
            except Exception as exc:  # noqa: BLE001 - a damaged cache is made again, never fatal
                log.warning("%s: unreadable (%s); quantizing again", self.path, exc)

    def weight(self, name: str, weight: torch.Tensor) -> QuantizedWeight:
        data, scales = self.tensors.get(f"{name}.data"), self.tensors.get(f"{name}.scales")
        if data is not None and scales is not None and _shape_fits(self.kind, data, scales, weight):
            return QuantizedWeight(self.kind, weight.shape[0], data, scales)
        made = quantize(weight, self.kind)
        self.tensors[f"{name}.data"], self.tensors[f"{name}.scales"] = made.data, made.scales
        self.made += 1
        return made

    def save(self) -> None:
        """Write what was made now (atomically: a crash leaves the old file or none)."""
        if self.path is None or not self.made:
            return
        _write_atomically(self.path, lambda partial: save_file({k: v.contiguous() for k, v in self.tensors.items()},
                                                               partial))


class _StoredChoice(BaseModel):
    """A `MeasuredChoice` file's contents (read back from disk: checked, never trusted)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["none", "int8", "int4"]
    max_rows: int = Field(ge=0)
    few: Literal["none", "int8", "int4"] = "none"
    few_rows: int = Field(ge=0, default=0)
    measured: dict[str, dict[int, float]] = {}
    limits: dict[str, NonNegativeInt] = {}  # "kind:out_features:in_features" -> rows
    described: str = ""  # `Choice.describe()`, for `llmos models show` (which does not import torch)


class MeasuredChoice:
    """What measuring chose for a model asked for in `wanted` (MODEL/llmos-quant/choice-KEY.json):
    the `Choice`, and each projection shape's row limit. KEY names what was asked, the dtype,
    PyTorch's version, the CPU (its model and flags), the threads a step runs on, whether the
    dense weights are prepacked for oneDNN (what the kernels raced), how they were raced
    (`quant.METHOD`), and the weight files."""

    def __init__(self, model_folder: Path | None, wanted: str, dtype: torch.dtype, packed: bool) -> None:
        self.path = (None if model_folder is None else
                     model_folder / CACHE_FOLDER / f"{CHOICE_PREFIX}{_choice_key(wanted, dtype, packed, model_folder)}.json")
        self.choice: Choice | None = None  # None: to be measured
        self.limits: dict[Shape, int] = {}
        stored = self._read()
        if stored is not None:
            self.choice, self.limits = stored

    def _read(self) -> tuple[Choice, dict[Shape, int]] | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            stored = _StoredChoice.model_validate_json(self.path.read_bytes())
            limits = {_shape(key): rows for key, rows in stored.limits.items()}
        except (OSError, ValidationError, ValueError) as exc:
            log.warning("%s: unreadable (%s); measuring again", self.path, exc)
            return None
        return Choice(stored.kind, stored.max_rows, stored.measured, stored.few, stored.few_rows), limits

    def save(self, choice: Choice, limits: dict[Shape, int]) -> None:
        """Keep what was measured now (atomically), unless it was read from the file."""
        if self.path is None or self.choice is not None:
            return
        stored = _StoredChoice(kind=choice.kind, max_rows=choice.max_rows, few=choice.few, few_rows=choice.few_rows,
                               measured=choice.measured, described=choice.describe(),
                               limits={f"{kind}:{n}:{k}": rows for (kind, n, k), rows in limits.items()})
        _write_atomically(self.path, lambda partial: Path(partial).write_text(stored.model_dump_json(indent=1)))

def _shape(key: str) -> Shape:
    kind, n, k = key.split(":")
    return kind, int(n), int(k)


def _write_atomically(path: Path, write: Callable[[str], object]) -> None:
    """`write(partial)` to a file beside `path`, then that file replaces `path`: a crash
    leaves the old file or none, two loads at once write two files. Then the files of the
    same name stem made for something else (other weights, a PyTorch or CPU no longer in use)
    are removed. An unwritable folder is logged and left."""
    try:
        path.parent.mkdir(exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        os.close(handle)
        try:
            write(partial)
            os.replace(partial, path)
        finally:
            Path(partial).unlink(missing_ok=True)
        for old in _stale(path):
            old.unlink(missing_ok=True)
    except OSError as exc:
        log.info("%s not cached: %s", path.name, exc)


def _stale(path: Path) -> list[Path]:
    """Other files beside `path` for the same kind (or request) and dtype: the key's first
    two fields (after CHOICE_PREFIX in a choice's name)."""
    chosen = path.stem.startswith(CHOICE_PREFIX)
    prefix, stem = (CHOICE_PREFIX, path.stem.removeprefix(CHOICE_PREFIX)) if chosen else ("", path.stem)
    same = prefix + "-".join(stem.split("-")[:2]) + "-"
    return [f for f in path.parent.glob(f"{same}*{path.suffix}") if f != path]


def _weights_key(kind: str, dtype: torch.dtype, model_folder: Path) -> str:
    width = "avx512" if "avx512f" in cpu_flags() else "avx2"
    if kind == "int4" and compiled_int4():
        width += "-minimum"  # `pack_int4`'s layout, not PyTorch's
    return f"{kind}-{_dtype_and_torch(dtype)}-{width}-{_weights_digest(model_folder)}"


def _choice_key(wanted: str, dtype: torch.dtype, packed: bool, model_folder: Path) -> str:
    machine = repr((cpu_model(), sorted(cpu_flags()), torch.get_num_threads(), packed, METHOD))
    cpu = hashlib.sha256(machine.encode()).hexdigest()[:12]
    return f"{wanted}-{_dtype_and_torch(dtype)}-{cpu}-{_weights_digest(model_folder)}"


def _dtype_and_torch(dtype: torch.dtype) -> str:
    return f"{str(dtype).removeprefix('torch.')}-torch{torch.__version__.split('+')[0]}"


def _weights_digest(model_folder: Path) -> str:
    """The model's weight files by name, size and time (weights replaced in place differ)."""
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in model_folder.glob("*.safetensors"))
    return hashlib.sha256(repr(files).encode()).hexdigest()[:12]


def _shape_fits(kind: str, data: torch.Tensor, scales: torch.Tensor, weight: torch.Tensor) -> bool:
    n, k = weight.shape
    if kind == "int4" and compiled_int4() and scales.shape != (n, 2 * k // INT4_GROUP):
        return False
    return data.shape[0] == n and data.shape[1] == (k if kind == "int8" else k // 2)
