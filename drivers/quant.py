"""Quantized projections for the engine's decode steps.

- int8: one scale per output row (symmetric). Multiplied by the compiled `int8_linear`
  (drivers/paged_attention.cpp) where it builds. On AVX2 without AVX-512 it rounds each row
  of x to int16 codes with a scale of its own (15 bits, far finer than the weights' 8) and
  multiplies in integers (vpmaddwd: twice float FMA's multiply-adds an instruction); on
  AVX-512 it keeps x in float32 and widens the weights in registers. Where it cannot be
  built, PyTorch's `aten._weight_int8pack_mm`, on a bfloat16 copy of x.
- int4: groups of INT4_GROUP weights along the input, each with a scale and a minimum
  (asymmetric). Where the compiled operators multiply in integers (AVX2 without AVX-512) they
  are packed for `int4_linear` (`pack_int4`: float16 scales and minimums, x rounded to int16
  codes as for int8); elsewhere packed by `aten._convert_weight_to_int4pack_for_cpu` and
  multiplied by `aten._weight_int4pack_mm_for_cpu` (bfloat16 activations). torchao's CPU
  int4/int8 paths call these same ATen kernels, so it would add nothing here.

Decoding one token for one or a few agents streams every weight, so a quarter (int8) or an
eighth (int4) of float32's bytes is what makes it fast; with more rows the step is bound by
arithmetic, where the dense oneDNN matmul is strong. So a quantized projection keeps beside
it the dense one the engine already has, and serves itself only batches of up to `max_rows`
rows, measured at load for each weight shape (`measure`, `row_limit`: on a 2-core Zen 3 the
integer int8 kernel beats dense up to 16-64 rows, the float one on AVX-512 up to a few);
prefills and larger batches go dense. A second kind may serve the smallest batches before
it (`Choice.few`): on the Zen 3, int4 for one or two rows, where its fewer bytes from memory
beat int8's fewer instructions. Which is fastest where is measured, not assumed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llmos.drivers import paged
from llmos.drivers.compute import cpu_flags
from llmos.kernel.errors import ConfigError

log = logging.getLogger(__name__)
CACHE_FOLDER = "llmos-quant"  # beside a model's weights: its quantized weights, made once

QUANTS = ("none", "int8", "int4")
INT4_GROUP = 32  # weights sharing one scale and zero point
INT4_INNER_TILES = 1  # the CPU kernel's packing parameter (its only supported value)
QUANT_ENV = "LLMOS_QUANT"  # none | int8 | int4 | auto (the default: measured)
TRIAL_ROWS = (1, 2, 4, 8, 16, 32, 64)  # batch sizes the measurement tries, smallest first
SPEEDUP_NEEDED = 1.15  # a kernel must beat dense by this much at a batch size to take it


_requested: ContextVar[str | None] = ContextVar("llmos_requested_quantization", default=None)


@contextmanager
def requested_quantization(name: str | None) -> Iterator[None]:
    """Models loaded inside take this quantization (None: LLMOS_QUANT, else auto)."""
    token = _requested.set(name)
    try:
        yield
    finally:
        _requested.reset(token)


def wanted_quantization() -> str:
    """"none", "int8", "int4" or "auto", as load_model(quant=) or LLMOS_QUANT asks; a
    ConfigError for anything else."""
    wanted = (_requested.get() or os.environ.get(QUANT_ENV) or "auto").strip().lower() or "auto"
    if wanted not in (*QUANTS, "auto"):
        raise ConfigError(f"quantization {wanted!r} (from load_model or {QUANT_ENV}): expected one of auto, "
                          f"{', '.join(QUANTS)}")
    return wanted


def available(kind: str) -> bool:
    """Whether this PyTorch build has `kind`'s CPU kernels."""
    ops = torch.ops.aten
    if kind == "int8":
        return hasattr(ops, "_weight_int8pack_mm")
    if kind == "int4":
        return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")
    return kind == "none"


INT4_BLOCK = 64  # `int4_linear` unpacks K in blocks of this many codes
INT4_MAX_IN = 16384  # and takes K up to this


def compiled_int4() -> bool:
    """Whether int4 weights go through the compiled `int4_linear` (the integer kernels of an
    AVX2 build without AVX-512), packed by `pack_int4`; else through PyTorch's kernel."""
    ops = paged.kernel()
    return ops is not None and bool(ops.integer_kernels())  # type: ignore[attr-defined]


def fits(kind: str, weight: torch.Tensor) -> bool:
    """Whether a (N, K) weight can take `kind` (int4 packs K in groups; PyTorch's kernel packs
    N in blocks of 8, the compiled one K in blocks of INT4_BLOCK)."""
    n, k = weight.shape
    if kind != "int4":
        return True
    if compiled_int4():
        return k % INT4_BLOCK == 0 and k <= INT4_MAX_IN
    return k % INT4_GROUP == 0 and n % 8 == 0


ALIGNMENT = 64  # bytes: an AVX-512 register, and what PyTorch's CPU allocator gives


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, copied if it does not start on a 64-byte boundary. Weights read back from the
    safetensors cache start wherever the file puts them (8-byte aligned), and torch 2.13's
    CPU int8 kernel (`_weight_int8pack_mm`, bfloat16 activations) reads them with aligned
    vector loads from 4 rows on: on this AVX-512 machine SmolLM2's lm_head segfaulted within
    seconds of repeated 4-8 row calls from the cache, never once copied to an aligned block."""
    return tensor if tensor.data_ptr() % ALIGNMENT == 0 else tensor.clone()


@dataclass
class QuantizedWeight:
    """y = x W^T for a (N, K) weight kept in `kind`; x is (M, K) float32 or bfloat16, and y
    (M, N) is in x's dtype. int8 goes through the compiled `int8_linear` where it builds (x in
    its own precision), else, like int4, through PyTorch's kernel on a bfloat16 copy of x."""

    kind: str
    out_features: int
    data: torch.Tensor  # int8 (N, K), or int4 packed (N, K/2) uint8
    # int8: (N,) bfloat16. int4: compiled, (N, 2 K/G) float16, each row's scales then its
    # minimums; else (K/G, N, 2) bfloat16 scale and zero, PyTorch's layout.
    scales: torch.Tensor

    def __post_init__(self) -> None:
        self.data, self.scales = aligned(self.data), aligned(self.scales)
        compiled = self.kind == "int8" or (self.kind == "int4" and self.scales.dtype == torch.float16)
        self._compiled = paged.kernel() if compiled else None
        self._scales32 = self.scales.float() if self._compiled is not None and self.kind == "int8" else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            if self.kind == "int4":
                return self._compiled.int4_linear(x.contiguous(), self.data, self.scales)  # type: ignore[attr-defined]
            return self._compiled.int8_linear(x.contiguous(), self.data, self._scales32)  # type: ignore[attr-defined]
        low = x.to(torch.bfloat16)
        if self.kind == "int8":
            return torch.ops.aten._weight_int8pack_mm(low, self.data, self.scales).to(x.dtype)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(low, self.data, INT4_GROUP, self.scales).to(x.dtype)

    @property
    def in_features(self) -> int:
        return self.data.shape[1] * (2 if self.kind == "int4" else 1)  # int4 packs two codes a byte

    @property
    def operands(self) -> list[torch.Tensor]:
        """(weight, scales) as the compiled `int8_linear` / `int4_linear` take them."""
        assert self._compiled is not None, "only a compiled kernel's weights have operands"
        return [self.data, self._scales32 if self.kind == "int8" else self.scales]

    @property
    def compiled(self) -> bool:
        """Whether a compiled operator multiplies it (`int8_linear` for int8 where the operators
        build, `int4_linear` for int4 where they multiply in integers)."""
        return self._compiled is not None

    @property
    def nbytes(self) -> int:
        extra = [] if self._scales32 is None else [self._scales32]
        return sum(t.numel() * t.element_size() for t in (self.data, self.scales, *extra))


def quantize(weight: torch.Tensor, kind: str) -> QuantizedWeight:
    """`weight` (N, K), float, in `kind` ("int8" or "int4")."""
    n = weight.shape[0]
    if kind == "int8":
        codes, scale = _int8(weight)
        return QuantizedWeight("int8", n, codes.to(torch.int8).contiguous(), scale.to(torch.bfloat16))
    if kind != "int4":
        raise ValueError(f"no quantization {kind!r}: expected int8 or int4")
    if compiled_int4():
        codes, scale, low = _int4_minimum(weight)
        return QuantizedWeight("int4", n, pack_int4(codes), torch.cat([scale, low], dim=1).contiguous())
    codes, scale, zero = _int4(weight)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).view(n, -1), INT4_INNER_TILES)
    scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # (K/G, N, 2)
    return QuantizedWeight("int4", n, packed, scales_and_zeros)


def dequantized(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """What `kind` ("none", "int8", "int4") keeps of `weight`, as a tensor of its shape and
    dtype (to measure quality with any forward pass: bench/quality.py)."""
    if kind == "none":
        return weight.detach().clone()
    if kind == "int8":
        codes, scale = _int8(weight)
        return (codes * scale[:, None]).to(weight.dtype)
    if compiled_int4():
        codes, scale, low = _int4_minimum(weight)
        kept = codes * scale.float()[..., None] + low.float()[..., None]
    else:
        codes, scale, zero = _int4(weight)
        kept = (codes - 8) * scale.float()[..., None] + zero.float()[..., None]  # as the kernel computes it
    return kept.view(weight.shape).to(weight.dtype)


def _int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes in -127..127 (float) and one scale per row: weight ~ codes * scale."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    return torch.round(w / scale[:, None]).clamp(-127, 127), scale


def _int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes in 0..15 (float, (N, K/G, G)), and per group a scale and the zero point the
    kernel takes, both bfloat16 as it holds them: weight ~ (codes - 8) * scale + zero."""
    w = weight.detach().float()
    n, k = w.shape
    groups = w.view(n, k // INT4_GROUP, INT4_GROUP)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-12)
    codes = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
    return codes, scale.to(torch.bfloat16), (low + 8 * scale).to(torch.bfloat16)


def _int4_minimum(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes in 0..15 (float, (N, K/G, G)), and per group a scale and minimum in float16 (as
    `int4_linear` holds them; the codes are rounded against those): weight ~ codes * scale + minimum."""
    w = weight.detach().float()
    n, k = w.shape
    groups = w.view(n, k // INT4_GROUP, INT4_GROUP)
    low = groups.amin(-1).half()
    scale = ((groups.amax(-1) - low.float()) / 15).clamp(min=1e-6).half()  # above zero in float16 too
    codes = torch.round((groups - low.float()[..., None]) / scale.float()[..., None]).clamp(0, 15)
    return codes, scale, low


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Codes (N, K/G, G) in 0..15 -> (N, K/2) uint8 as `int4_linear` reads them: in each block
    of 64, 16-bit word l holds codes l, 16 + l, 32 + l and 48 + l, lowest nibble first (so
    byte 2l holds l and 16 + l, byte 2l + 1 holds 32 + l and 48 + l)."""
    n = codes.shape[0]
    blocks = codes.to(torch.uint8).reshape(n, -1, 4, 16)  # (N, K/64, quarter, l)
    low_byte = blocks[:, :, 0] | (blocks[:, :, 1] << 4)
    high_byte = blocks[:, :, 2] | (blocks[:, :, 3] << 4)
    return torch.stack([low_byte, high_byte], dim=-1).reshape(n, -1).contiguous()


class QuantCache:
    """A model's quantized weights on disk (MODEL/llmos-quant/KEY.safetensors), so a load
    does not quantize them again (0.6 s of a cold start for SmolLM2 in int4). KEY names the
    kind, the source dtype, PyTorch's version, the CPU's vector width (which the packed int4
    layout may depend on), and the model's weight files (size and time: weights replaced in
    place are quantized again). A folder that cannot be written is only not cached."""

    def __init__(self, model_folder: Path | None, kind: str, dtype: torch.dtype) -> None:
        self.kind = kind
        self.path = (None if model_folder is None else
                     model_folder / CACHE_FOLDER / f"{_cache_key(kind, dtype, model_folder)}.safetensors")
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

    def _drop_stale(self) -> None:
        assert self.path is not None
        for old in _stale(self.path):
            old.unlink(missing_ok=True)

    def save(self) -> None:
        """Write what was made now (atomically: a crash leaves the old file or none)."""
        if self.path is None or not self.made:
            return
        try:
            self.path.parent.mkdir(exist_ok=True)
            handle, partial = tempfile.mkstemp(dir=self.path.parent, suffix=".partial")  # two loads at once: two files
            os.close(handle)
            try:
                save_file({k: v.contiguous() for k, v in self.tensors.items()}, partial)
                os.replace(partial, self.path)
            finally:
                Path(partial).unlink(missing_ok=True)
            self._drop_stale()
        except OSError as exc:
            log.info("quantized weights not cached in %s: %s", self.path.parent, exc)


def _stale(path: Path) -> list[Path]:
    """Other caches of the same kind and dtype beside `path`: made for other weights, a torch
    or a CPU no longer in use."""
    kind_and_dtype = "-".join(path.stem.split("-")[:2]) + "-"
    return [f for f in path.parent.glob(f"{kind_and_dtype}*.safetensors") if f != path]


def _cache_key(kind: str, dtype: torch.dtype, model_folder: Path) -> str:
    width = "avx512" if "avx512f" in cpu_flags() else "avx2"
    if kind == "int4" and compiled_int4():
        width += "-minimum"  # `pack_int4`'s layout, not PyTorch's
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in model_folder.glob("*.safetensors"))
    weights = hashlib.sha256(repr(files).encode()).hexdigest()[:12]
    return f"{kind}-{str(dtype).removeprefix('torch.')}-torch{torch.__version__.split('+')[0]}-{width}-{weights}"


def _shape_fits(kind: str, data: torch.Tensor, scales: torch.Tensor, weight: torch.Tensor) -> bool:
    n, k = weight.shape
    if kind == "int4" and compiled_int4() and scales.shape != (n, 2 * k // INT4_GROUP):
        return False
    return data.shape[0] == n and data.shape[1] == (k if kind == "int8" else k // 2)


@dataclass(frozen=True)
class Choice:
    """A quantization for a model's decode steps, and up to how many rows it serves."""

    kind: str  # "none", "int8" or "int4"
    max_rows: int  # batches of at most this many rows use it; 0 with "none"
    measured: dict[str, dict[int, float]]  # kind -> rows -> ms of one trial matmul (empty if not measured)
    # A second kind before `kind` for the smallest batches, where it beats `kind` (int4's half
    # the bytes for one or two agents, int8's fewer instructions a weight for more).
    few: str = "none"
    few_rows: int = 0

    def describe(self) -> str:
        if self.kind == "none":
            return "none"
        first = f"{self.few} up to {self.few_rows} rows, then " if self.few != "none" else ""
        return f"{first}{self.kind} (decode batches up to {self.max_rows} rows)"


def measure(weight: torch.Tensor, dense: Callable[[torch.Tensor], torch.Tensor], kinds: tuple[str, ...],
            dtype: torch.dtype, repeats: int = 5, then: torch.Tensor | None = None) -> Choice:
    """Of `kinds`, the one that beats `dense` on `weight` (the model's largest projection, the
    MLP's gate and up) by SPEEDUP_NEEDED up to the most rows (`row_limit`; a tie: the faster
    there). Another that beats it at the smallest batches serves those (`Choice.few`): raced
    with weights from memory, as a decode step reads them, through `weight` and `then` (the
    MLP's down projection, taking the first of its outputs) as one MLP pass does."""
    times: dict[str, dict[int, float]] = {"none": {}}
    limits: dict[str, int] = {}
    made: dict[str, QuantizedWeight] = {}
    for kind in kinds:
        if not (available(kind) and fits(kind, weight)):
            continue
        made[kind] = quantize(weight, kind)
        # Each kind races the same dense times (measured once a size, kept in times["none"]).
        limits[kind], raced = row_limit(made[kind], dense, weight.shape[1], dtype, repeats, known=times["none"])
        times[kind] = {rows: small for rows, (_, small) in raced.items()}
    winners = [kind for kind in limits if limits[kind]]
    if not winners:
        return Choice("none", 0, times)
    widest = max(winners, key=lambda kind: (limits[kind], -times[kind][limits[kind]]))  # a tie: the faster there
    for other in sorted(set(winners) - {widest}, key=lambda kind: times[kind][1]):
        chains = {kind: [made[kind]] + ([quantize(then, kind)] if then is not None and fits(kind, then) else [])
                  for kind in (other, widest)}
        few_rows, raced = row_limit(FromMemory(chains[other]), FromMemory(chains[widest]), weight.shape[1], dtype,
                                    repeats)
        times[f"{other} from memory"] = {rows: mine for rows, (_, mine) in raced.items()}
        times[f"{widest} from memory"] = {rows: theirs for rows, (theirs, _) in raced.items()}
        if few_rows:
            return Choice(widest, limits[widest], times, few=other, few_rows=min(few_rows, limits[widest]))
    return Choice(widest, limits[widest], times)


COLD_BYTES = 96 << 20  # more than a server CPU's last-level cache (this Zen 3's: 32 MiB)


class FromMemory:
    """The product of a chain of weights (each takes the first of the previous one's outputs),
    each call on the next of enough copies of them to fill COLD_BYTES, so that the weights come
    from DRAM as a decode step's do (the trial's other calls leave a lone copy in cache, where
    a kernel that reads fewer bytes but spends more instructions a weight, like int4's, looks
    slower than it is)."""

    def __init__(self, chain: list[QuantizedWeight]) -> None:
        count = -(-COLD_BYTES // max(sum(w.nbytes for w in chain), 1))
        self.copies = [[QuantizedWeight(w.kind, w.out_features, w.data.clone(), w.scales.clone()) for w in chain]
                       for _ in range(count)]
        self._turn = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._turn = (self._turn + 1) % len(self.copies)
        for weight in self.copies[self._turn]:
            x = weight(x[:, : weight.in_features].contiguous())
        return x


def row_limit(small: Callable[[torch.Tensor], torch.Tensor], dense: Callable[[torch.Tensor], torch.Tensor],
              in_features: int, dtype: torch.dtype, repeats: int = 5,
              known: dict[int, float] | None = None) -> tuple[int, dict[int, tuple[float, float]]]:
    """The largest of TRIAL_ROWS at which `small` beats `dense` by SPEEDUP_NEEDED before it
    loses at two sizes in a row (0: none), and the ms each took, (dense, small) by rows: past
    it the dense matmul serves. Both grow with the rows, so a lone loss between wins is the
    host's noise (on a shared 2-core host one at 8 rows capped int8 at 4, and 16 agents went
    dense). `known`: dense's times by rows, taken from it where there and added to it where not."""
    raced: dict[int, tuple[float, float]] = {}
    dense_ms = {} if known is None else known
    limit, losses = 0, 0
    for rows in TRIAL_ROWS:
        x = torch.randn(rows, in_features, dtype=dtype)
        fns = [lambda: small(x)] if rows in dense_ms else [lambda: small(x), lambda: dense(x)]
        best = _best_ms(fns, repeats)
        dense_ms.setdefault(rows, best[-1])
        raced[rows] = (dense_ms[rows], best[0])
        won = raced[rows][0] >= SPEEDUP_NEEDED * raced[rows][1]
        losses = 0 if won else losses + 1
        if losses == 2 or (losses and rows == TRIAL_ROWS[0]):  # at one row a loss is the answer
            break
        limit = rows if won else limit
    return limit, raced


def _best_ms(fns: list[Callable[[], torch.Tensor]], repeats: int) -> list[float]:
    """Each of `fns`' best time in ms over `repeats` calls, taken in turns: on a shared host a
    noisy spell then falls on all of them, not on whichever ran during it."""
    best = [float("inf")] * len(fns)
    with torch.inference_mode():
        for fn in fns:
            fn()  # warm: first calls allocate
        for _ in range(repeats):
            for i, fn in enumerate(fns):
                began = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - began)
    return [b * 1000 for b in best]
