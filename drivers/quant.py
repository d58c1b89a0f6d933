"""Quantized projections for the engine's decode steps.

- int8: one scale per output row (symmetric). Multiplied by the compiled `int8_linear`
  (drivers/paged_attention.cpp) where it builds. On AVX2 without AVX-512 it rounds each row
  of x to int16 codes with a scale of its own (15 bits, far finer than the weights' 8) and
  multiplies in integers (vpmaddwd: twice float FMA's multiply-adds an instruction); on
  AVX-512 it keeps x in float32 and widens the weights in registers. Where it cannot be
  built, PyTorch's `aten._weight_int8pack_mm`, on a bfloat16 copy of x.
- int4: groups of INT4_GROUP weights along the input, each with a scale and a minimum
  (asymmetric). Where the compiled `int4_linear` builds (AVX2, FMA and F16C: AVX-512 machines
  too) they are packed for it (`pack_int4`: float16 scales and minimums, x rounded to int16
  codes as for int8); elsewhere packed by `aten._convert_weight_to_int4pack_for_cpu` and
  multiplied by `aten._weight_int4pack_mm_for_cpu` (bfloat16 activations). torchao's CPU
  int4/int8 paths call these same ATen kernels, so it would add nothing here.

Decoding one token for one or a few agents streams every weight, so a quarter (int8) or an
eighth (int4) of float32's bytes is what makes it fast; with more rows the step is bound by
arithmetic, where the dense oneDNN matmul is strong. So a quantized projection keeps beside
it the dense one the engine already has, and serves itself only batches of up to `max_rows`
rows, measured for each weight shape with weights from memory as a decode step reads them
(`measure`, `row_limit`, `FromMemory`: on a 2-core Zen 3 the integer int8 kernel beats dense
up to 32-64 rows, the float one on AVX-512 up to a few) at a model's first load on a machine,
and kept beside its weights (drivers/quant_cache.py);
prefills and larger batches go dense. A second kind may serve the smallest batches before
it (`Choice.few`): on the Zen 3, int4 for one or two rows, where its fewer bytes from memory
beat int8's fewer instructions. Which is fastest where is measured, not assumed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from llmos.drivers import paged
from llmos.kernel.errors import ConfigError


QUANTS = ("none", "int8", "int4")
INT4_GROUP = 32  # weights sharing one scale and zero point
INT4_INNER_TILES = 1  # the CPU kernel's packing parameter (its only supported value)
QUANT_ENV = "LLMOS_QUANT"  # none | int8 | int4 | auto (the default: measured)
TRIAL_ROWS = (1, 2, 4, 8, 16, 32, 64)  # batch sizes the measurement tries, smallest first
SPEEDUP_NEEDED = 1.15  # a kernel must beat dense by this much at a batch size to take it
# The few rows' kind must beat the main one by this much (both quantized; int4's perplexity
# is gated in bench/quality.py): int4 at one row ran whole decode steps 1.23x faster than int8
# on a 2-core Zen 3, and raced alone read 1.04-1.36x, around SPEEDUP_NEEDED.
FEW_SPEEDUP_NEEDED = 1.05
# Timed calls of each kernel at each size, best taken. A choice is measured once on a machine
# and kept (drivers/quant_cache.py), so it can afford care: with 5 on a shared 2-core host,
# three loads in a row chose three ways.
REPEATS = 15
# ...and turns for at least this long at each size: at one or two rows 15 turns took ~50 ms,
# inside one noisy spell of the host (one load read int4 and int8 level at one row, where the
# next two read int4 1.14-1.25x faster).
RACE_SECONDS = 0.25
METHOD = 4  # how `measure` races the kinds; a choice kept from another method is measured again
# (4: AVX-512 builds race llmos's `int4_linear`, not PyTorch's int4 kernel)


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
    """Whether int4 weights go through the compiled `int4_linear` (any build with AVX2, FMA and
    F16C), packed by `pack_int4`; else through PyTorch's kernel."""
    ops = paged.kernel()
    return ops is not None and bool(ops.int4_kernel())  # type: ignore[attr-defined]


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
        build, `int4_linear` for int4 where it builds: AVX2, FMA and F16C)."""
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


Matmul = Callable[[torch.Tensor], torch.Tensor]


def measure(chain: list[torch.Tensor], dense_of: Callable[[torch.Tensor], Matmul], kinds: tuple[str, ...],
            dtype: torch.dtype, repeats: int = REPEATS, seconds: float = RACE_SECONDS) -> Choice:
    """Of `kinds`, the one that beats the dense matmul by SPEEDUP_NEEDED up to the most rows
    (`won_up_to`; a tie: the faster there), and another that beats that one by
    FEW_SPEEDUP_NEEDED at the smallest batches for those (`Choice.few`). All are raced in
    turns (`race`) through `chain` (the model's MLP: gate and up, then down, each taking the
    first of the previous one's outputs) with weights from memory, as a decode step reads them
    (`FromMemory`); `dense_of(weight)` is the dense matmul the engine would run. `chain[0]`
    decides which kinds fit."""
    racers: dict[str, Matmul] = {"none": FromMemory(lambda: [dense_link(w, dense_of) for w in chain])}
    for kind in kinds:
        if not (available(kind) and fits(kind, chain[0])):
            continue
        made = [quantize(w, kind) if fits(kind, w) else None for w in chain]  # None: dense, as the engine keeps it
        racers[kind] = FromMemory(lambda made=made: [quantized_link(q) if q is not None else dense_link(w, dense_of)
                                                     for w, q in zip(chain, made, strict=True)])
    times = race(racers, chain[0].shape[1], dtype, repeats, seconds=seconds)
    limits = {kind: won_up_to(times["none"], times[kind]) for kind in racers if kind != "none"}
    winners = [kind for kind in limits if limits[kind]]
    if not winners:
        return Choice("none", 0, times)
    widest = max(winners, key=lambda kind: (limits[kind], -times[kind][limits[kind]]))  # a tie: the faster there
    for other in sorted(set(winners) - {widest}, key=lambda kind: times[kind][TRIAL_ROWS[0]]):
        few_rows = won_up_to(times[widest], times[other], FEW_SPEEDUP_NEEDED)
        if few_rows:
            return Choice(widest, limits[widest], times, few=other, few_rows=min(few_rows, limits[widest]))
    return Choice(widest, limits[widest], times)


COLD_BYTES = 96 << 20  # more than a server CPU's last-level cache (this Zen 3's: 32 MiB)
# Weight bytes a timed trial streams at least: a decode step streams 60-540 MB through ~120
# calls back to back. A lone 1-2 MB chain timed alone carried its start (threads waking, the
# prefetchers finding the stream) into its time, which at one row hid int4's lead over int8:
# raced one chain a trial, int4 read 1.04-1.2x int8's speed, where whole decode steps ran 1.23x.
TRIAL_BYTES = 16 << 20


@dataclass(frozen=True)
class Link:
    """One matmul of a trial chain: its input is the first `in_features` of the previous output."""

    matmul: Matmul
    in_features: int
    nbytes: int


def quantized_link(weight: QuantizedWeight) -> Link:
    """A copy of `weight` (its own memory) as a link of a trial chain."""
    copy = QuantizedWeight(weight.kind, weight.out_features, weight.data.clone(), weight.scales.clone())
    return Link(copy, copy.in_features, copy.nbytes)


def dense_link(weight: torch.Tensor, dense_of: Callable[[torch.Tensor], Matmul]) -> Link:
    """The dense matmul of a copy of `weight` as a link of a trial chain."""
    return Link(dense_of(weight.clone()), weight.shape[1], weight.numel() * weight.element_size())


class FromMemory:
    """A chain of matmuls run `chains_per_call` times a call (each time from x, on the next of
    enough copies of the chain, made by `make_chain()`, to fill COLD_BYTES), so that the
    weights come from DRAM as a decode step's do, TRIAL_BYTES or more of them in a row: a
    model's weights outgrow the cache, a lone trial weight stays in it, and there dense
    float32 looked twice as fast against the kernels (a choice measured so gave 16 agents
    int4 where int8 ran their decode steps faster) and int4, fewer bytes but more
    instructions a weight, slower than int8. Returns the last chain's output."""

    def __init__(self, make_chain: Callable[[], list[Link]]) -> None:
        first = make_chain()
        chain_bytes = max(sum(link.nbytes for link in first), 1)
        self.chains_per_call = -(-TRIAL_BYTES // chain_bytes)
        count = -(-COLD_BYTES // chain_bytes)  # >= chains_per_call: a call never reads a copy twice
        self.copies = [first] + [make_chain() for _ in range(count - 1)]
        self._turn = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.chains_per_call):
            self._turn = (self._turn + 1) % len(self.copies)
            out = x
            for link in self.copies[self._turn]:
                out = link.matmul(out[:, : link.in_features].contiguous())
        return out


def row_limit(small: Matmul, dense: Matmul, in_features: int, dtype: torch.dtype, repeats: int = REPEATS,
              seconds: float = RACE_SECONDS) -> tuple[int, dict[str, dict[int, float]]]:
    """How many rows `small` serves before `dense` (`won_up_to`, raced in turns by `race`),
    and the ms a chain each took, by racer ("small", "dense") and rows."""
    times = race({"dense": dense, "small": small}, in_features, dtype, repeats, baseline="dense", seconds=seconds)
    return won_up_to(times["dense"], times["small"]), times


def race(racers: dict[str, Matmul], in_features: int, dtype: torch.dtype, repeats: int = REPEATS,
         baseline: str = "none", seconds: float = 0.0) -> dict[str, dict[int, float]]:
    """The ms a chain each of `racers` takes at each of TRIAL_ROWS (a call's time over its
    `chains_per_call`, where it has one, as FromMemory does), by name and rows. At each size
    all are timed in turns, so that a noisy spell on the shared host falls on all of them,
    not on whichever ran during it (raced one kind after another, three loads chose three
    ways), `repeats` turns or more until `seconds` have passed. A racer that has lost to
    `baseline` where `won_up_to` stops is not timed further; the race ends when none is left."""
    times: dict[str, dict[int, float]] = {name: {} for name in racers}
    running = list(racers)
    for rows in TRIAL_ROWS:
        x = torch.randn(rows, in_features, dtype=dtype)
        best = _best_ms([lambda racer=racers[name]: racer(x) for name in running], repeats, seconds)
        for name, ms in zip(running, best, strict=True):
            times[name][rows] = ms / _chains_per_call(racers[name])
        running = [name for name in running if name == baseline or not _stopped(times[baseline], times[name])]
        if running == [baseline]:
            break
    return times


def won_up_to(slow: dict[int, float], fast: dict[int, float], needed: float = SPEEDUP_NEEDED) -> int:
    """The largest size (of TRIAL_ROWS, timed in both) at which `fast` beats `slow` by `needed`
    before it loses at two sizes in a row (0: none): past it `slow` serves. Both grow with the
    rows, so a lone loss between wins is the host's noise (on a shared 2-core host one at 8
    rows capped int8 at 4, and 16 agents went dense); at the first size a loss is the answer."""
    return _scan(slow, fast, needed)[0]


def _stopped(slow: dict[int, float], fast: dict[int, float]) -> bool:
    """Whether `won_up_to` has its answer from the sizes timed so far."""
    return _scan(slow, fast, SPEEDUP_NEEDED)[1]


def _scan(slow: dict[int, float], fast: dict[int, float], needed: float) -> tuple[int, bool]:
    limit, losses = 0, 0
    for rows in (r for r in TRIAL_ROWS if r in slow and r in fast):
        won = slow[rows] >= needed * fast[rows]
        losses = 0 if won else losses + 1
        if losses == 2 or (losses and rows == TRIAL_ROWS[0]):
            return limit, True
        limit = rows if won else limit
    return limit, False


def _chains_per_call(matmul: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """How many chains one call of `matmul` runs (FromMemory's `chains_per_call`; else one)."""
    return getattr(matmul, "chains_per_call", 1)


def _best_ms(fns: list[Callable[[], torch.Tensor]], repeats: int, seconds: float = 0.0) -> list[float]:
    """Each of `fns`' best time in ms over `repeats` turns, or more until `seconds` have passed,
    taken in turns: on a shared host a noisy spell then falls on all of them, not on whichever
    ran during it."""
    best = [float("inf")] * len(fns)
    with torch.inference_mode():
        for fn in fns:
            fn()  # warm: first calls allocate
        began_all, turns = time.perf_counter(), 0
        while turns < repeats or time.perf_counter() - began_all < seconds:
            for i, fn in enumerate(fns):
                began = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - began)
            turns += 1
    return [b * 1000 for b in best]
