"""The paged-attention decode kernel (paged_attention.cpp), compiled for this CPU on first use.

No kept library serves paged attention on the CPU for this PyTorch (vLLM's and IPEX's CPU
kernels come with their own builds of everything), so llmos carries one small C++ operator,
built by torch.utils.cpp_extension with the machine's own vector instructions
(-march=native: AVX2 on one machine, AVX-512 on another) and cached per source, PyTorch
version and CPU flags, so a machine never runs another's build. It takes ~6 s once.

Without a compiler (or where the build fails) `decode` returns None and the engine gathers
each batch's blocks into a contiguous copy for sdpa instead: correct, and slower (the
reason is logged once).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

import torch

from llmos.drivers.compute import cpu_flags

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("paged_attention.cpp")
HEADERS = (Path(__file__).with_name("team.h"),)  # what SOURCE includes of ours
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]  # fast-math: vector exp and sums; no NaN is expected
BUILD_ENV = "LLMOS_KERNEL_CACHE"  # where builds are kept (default: ~/.cache/llmos/kernels)

_lock = threading.Lock()
_state: dict[str, object] = {}  # "op" -> the operator, or "error" -> why there is none


def build_key() -> str:
    """What a build depends on: the sources, PyTorch's version and the CPU's vector flags."""
    wanted = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c")))
    sources = b"".join(path.read_bytes() for path in (SOURCE, *HEADERS))
    digest = hashlib.sha256(sources + torch.__version__.encode() + " ".join(wanted).encode())
    return digest.hexdigest()[:16]


def _build_folder(key: str) -> Path:
    base = Path(os.environ.get(BUILD_ENV) or Path.home() / ".cache" / "llmos" / "kernels")
    folder = base / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _ninja_on_path() -> None:
    """cpp_extension runs `ninja` from PATH; the one pip installs (the `ninja` package) sits
    beside the interpreter, which a venv's python run by its path does not put on PATH."""
    if shutil.which("ninja") is None:
        try:
            import ninja  # type: ignore[import-untyped]
        except ImportError:
            return
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _load() -> object:
    from torch.utils import cpp_extension

    key = build_key()
    name, folder = f"llmos_paged_{key}", _build_folder(key)
    built = folder / f"{name}.so"
    if built.exists():  # the folder is keyed by source, torch and CPU: load it without asking ninja (~0.2 s)
        try:
            torch.ops.load_library(str(built))
            return torch.ops.llmos_paged
        except OSError:  # a build cut short: build it again
            pass
    _ninja_on_path()
    cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-lgomp"],
                       build_directory=str(folder), is_python_module=False, verbose=False)
    return torch.ops.llmos_paged


def kernel() -> object | None:
    """The compiled operators (torch.ops.llmos_paged), or None where they cannot be built."""
    with _lock:
        if "op" not in _state and "error" not in _state:
            try:
                _state["op"] = _load()
            except Exception as exc:  # no compiler, no headers: the gather path serves
                _state["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                log.warning("paged attention kernel unavailable (%s); decoding gathers KV blocks instead",
                            _state["error"])
        return _state.get("op")


def supports(q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: str) -> bool:
    """Whether the compiled kernel serves a model of this shape here."""
    if not device.startswith("cpu") or dtype not in (torch.float32, torch.bfloat16) or q_heads % kv_heads:
        return False
    ops = kernel()
    return ops is not None and bool(ops.supports(q_heads // kv_heads, head_dim))


def lora_kernel(dtype: torch.dtype, device: str) -> object | None:
    """The compiled operators for LoRA passes (`lora_add`), where they serve a model of this
    dtype here; None: the adapters' products go through PyTorch's matmuls."""
    if not device.startswith("cpu") or dtype not in (torch.float32, torch.bfloat16):
        return None
    return kernel()
