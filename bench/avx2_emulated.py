"""bench/generate.py as it would run on a CPU with AVX2 and no AVX-512, on a machine that has
AVX-512: what a developer without an AVX2 machine can measure of that path.

torch's kernels are capped at AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, set by
the caller: they are read when torch loads), llmos sees the CPU's flags without any avx512 or
amx one (so it picks float32 and keys its caches as an AVX2 machine's), and its compiled
operators are built for x86-64-v3 (AVX2, FMA) instead of -march=native, in a kernel cache of
their own. The peer is not capped: llama-cpp-python's build uses the AVX-512 it was compiled
for, so the ratios to llama.cpp are lower than an AVX2 machine's would be. Results go to
results/generate_avx2_emulated.json (the main table's file is left alone).

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 LLMOS_KERNEL_CACHE=/tmp/avx2-kernels \\
        PYTHONPATH=bench .venv/bin/python bench/avx2_emulated.py --ns 1 16 64 --repeat 3 --runs
"""
from __future__ import annotations

import os
import sys

import llmos.drivers.compute as compute
import llmos.drivers.paged as paged
import llmos.drivers.quant as quant
import llmos.drivers.transformers_driver as transformers_driver

_real_flags = compute.cpu_flags


def avx2_only() -> set[str]:
    return {flag for flag in _real_flags() if not flag.startswith(("avx512", "amx"))}


def main() -> None:
    if os.environ.get("ATEN_CPU_CAPABILITY") != "avx2" or os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":
        sys.exit("set ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 (see the docstring)")
    for module in (compute, quant, paged, transformers_driver):
        module.cpu_flags = avx2_only  # type: ignore[attr-defined]
    paged.FLAGS[:] = ["-march=x86-64-v3" if flag.startswith("-march") else flag for flag in paged.FLAGS]
    import charts
    import generate

    generate.RESULTS = generate.RESULTS.with_name("generate_avx2_emulated.json")
    charts.redraw = lambda *args, **kwargs: None  # the README's chart is the real machine's
    sys.argv = ["bench/generate.py", *sys.argv[1:]]
    generate.main()


if __name__ == "__main__":
    main()
