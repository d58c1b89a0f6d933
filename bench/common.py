"""What the benchmarks share: the prompts, the summary of a run, the machine they ran on,
and a temporary LLMOS_HOME over the repository's model cache.

The benchmarks run as scripts (`python bench/generate.py`), so this folder is on sys.path
and they import this module as `common`.
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

REPO_MODEL_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "models"  # the test suite's weights
TOPICS = ["the ocean", "volcanoes", "honey bees", "the moon", "bicycles", "coffee", "glaciers", "owls", "trains",
          "deserts", "rainbows", "chess", "penguins", "libraries", "thunderstorms", "gardens"]


def questions(n: int, first: int = 0) -> list[str]:
    """n short questions (about 45 tokens each in SmolLM2's chat template); `first` numbers
    them on from another run's, so no two runs ask the very same prompts."""
    return [f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} for a curious child, number {i + 1}."
            for i in range(first, first + n)]


def percentile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def summarize(ttfts: list[float], latencies: list[float], tokens: int, wall: float) -> dict[str, float]:
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95),
            "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95)}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, with every run's rate beside it."""
    ranked = sorted(runs, key=lambda r: r["tokens_per_s"])
    return {**ranked[(len(ranked) - 1) // 2], "tokens_per_s_runs": [r["tokens_per_s"] for r in runs]}


def use_model_cache(prefix: str = "llmos-bench-") -> Path:
    """Run in a temporary LLMOS_HOME (never ~/.llmos) whose model cache is the repository's
    (.cache/models, the test suite's), so the weights are not de-quantized again; a given
    LLMOS_HOME is respected. Subprocesses inherit it through the environment."""
    if os.environ.get("LLMOS_HOME"):
        return Path(os.environ["LLMOS_HOME"])
    home = Path(tempfile.mkdtemp(prefix=prefix))
    if REPO_MODEL_CACHE.is_dir():
        (home / "models").symlink_to(REPO_MODEL_CACHE, target_is_directory=True)
    os.environ["LLMOS_HOME"] = str(home)
    return home


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        return ""


def machine(threads: int) -> dict[str, Any]:
    """The machine a benchmark ran on: its CPU and the flags that decide llmos's dtype and
    kernels (AVX-512, bf16, AMX; or AVX2 only), the torch threads used, and the load."""
    import torch

    from llmos.drivers.transformers_driver import cpu_flags

    flags = sorted(f for f in cpu_flags() if f == "avx2" or f.startswith(("avx512", "amx")))
    simd = ("AMX" if any(f.startswith("amx") for f in flags) else "AVX-512" if any(f.startswith("avx512") for f in flags)
            else "AVX2 only" if "avx2" in flags else "no AVX2")
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "cpu_flags": flags, "simd": simd,
            "bf16_native": bool({"avx512_bf16", "amx_bf16"} & set(flags)), "python": platform.python_version(),
            "torch": torch.__version__, "threads": threads, "loadavg_1m_at_start": os.getloadavg()[0]}


# -- llama.cpp ---------------------------------------------------------------------------------------
def llama_cpp_extra_buffers_crash() -> bool:
    """Whether llama-cpp-python must load weights without llama.cpp's extra buffer types here.
    Its build in .venv (0.3.36, ggml 0.25.3, compiled for this CPU) dies of a general
    protection fault at `ldtilecfg` in ggml_backend_amx_mul_mat on the first matmul on an
    AMX CPU: the AMX weight buffer is one of those extra types. Without them llama.cpp still
    runs its AVX-512 kernels."""
    from llmos.drivers.compute import cpu_flags  # not torch: the llama.cpp peer's process has none

    return "amx_int8" in cpu_flags()


def llama_cpp_without_extra_buffers() -> None:
    """Make every llama_cpp.Llama loaded from now on in this process skip the extra buffer
    types (llama_model_params.use_extra_bufts, which Llama() and its server do not expose)."""
    import llama_cpp.llama_cpp as lib

    defaults = lib.llama_model_default_params
    if getattr(defaults, "without_extra_buffers", False):
        return

    def params() -> Any:
        p = defaults()
        p.use_extra_bufts = False
        return p

    params.without_extra_buffers = True  # type: ignore[attr-defined]
    lib.llama_model_default_params = params
