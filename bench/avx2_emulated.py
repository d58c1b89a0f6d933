"""bench/generate.py as it would run on a CPU with AVX2 and no AVX-512, on a machine that has
AVX-512: what a developer without an AVX2 machine can measure of that path.

torch's kernels are capped at AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, set by
the caller: they are read when torch loads), llmos sees the CPU's flags without any avx512 or
amx one (so it picks float32 and keys its caches as an AVX2 machine's), and its compiled
operators are built for x86-64-v3 (AVX2, FMA) instead of -march=native, in a kernel cache of
their own. Results go to results/generate_avx2_emulated.json (the main table's file is left
alone). With `--bench overhead`, bench/overhead.py runs the same way instead (its fresh
processes emulated too): the kernel's overhead on this path, to
results/overhead_avx2_emulated.json; with `--bench prefix_tail`, bench/prefix_tail.py (a cached
prompt's tail), to results/prefix_tail_avx2_emulated.json.

The peer: llama-cpp-python's wheel picks its kernels by the CPU it finds, and no setting
caps it, so by default it keeps its AVX-512 and the ratios are lower than an AVX2 machine's
would be. `--llama-cpp FOLDER` runs it from a build for AVX2 alone instead (put first on the
llama.cpp child processes' PYTHONPATH), made once with:

    CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \
        -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_CPU_ALL_VARIANTS=OFF \
        -DGGML_BACKEND_DL=OFF" .venv/bin/pip install --no-cache-dir --no-deps --target /tmp/llama-avx2 \
        llama-cpp-python==<the installed version> --no-binary llama-cpp-python   # ~5 min on 2 cores

(`--no-cache-dir`: else pip reuses the wheel it built for the bench's own install, the native
one with AVX-512; `--llama-cpp` refuses a build whose system info says AVX512.)

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 LLMOS_KERNEL_CACHE=/tmp/avx2-kernels \
        PYTHONPATH=bench .venv/bin/python bench/avx2_emulated.py --llama-cpp /tmp/llama-avx2 \
        --ns 1 16 64 --repeat 3 --runs
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 LLMOS_KERNEL_CACHE=/tmp/avx2-kernels \
        PYTHONPATH=bench .venv/bin/python bench/avx2_emulated.py --bench overhead \
        --agents 1 16 64 --processes 6 --pairs 8
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from llmos.testing import emulate_avx2


def llama_cpp_build(folder: str | None) -> str:
    """Put `folder`'s llama-cpp-python first for the llama.cpp child processes (they inherit
    the environment); what the results call the peer's build."""
    if folder is None:
        return "the installed wheel (its own CPU dispatch: AVX-512 on this machine)"
    if not (Path(folder) / "llama_cpp").is_dir():
        sys.exit(f"--llama-cpp {folder}: no llama_cpp package there (see the docstring for the build)")
    features = llama_cpp_features(folder)
    if "AVX512 = 1" in features:
        sys.exit(f"--llama-cpp {folder} was built with AVX-512 (pip reused a cached wheel? build it again with "
                 f"--no-cache-dir, see the docstring): {features}")
    os.environ["PYTHONPATH"] = os.pathsep.join([folder, os.environ.get("PYTHONPATH", "")])
    return f"built for AVX2 without AVX-512 or AVX-VNNI ({folder}; {features})"


def llama_cpp_features(folder: str) -> str:
    """What the llama.cpp build in `folder` was compiled for (its system info)."""
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": folder},
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"--llama-cpp {folder}: its llama_cpp does not import: {done.stderr[-2000:]}")
    return done.stdout.strip()


EMULATED = "AVX2 (torch capped, llmos's compiled operators x86-64-v3)"


def run_generate(peer: str, rest: list[str]) -> None:
    import charts
    import common
    import generate

    emulated = common.machine

    def machine(threads: int) -> dict[str, object]:
        return {**emulated(threads), "emulated": EMULATED, "llama_cpp_build": peer}

    generate.machine = machine
    generate.RESULTS = generate.RESULTS.with_name("generate_avx2_emulated.json")
    charts.redraw = lambda *args, **kwargs: None  # the README's chart is the real machine's
    sys.argv = ["bench/generate.py", *rest]
    generate.main()


def run_overhead(rest: list[str]) -> None:
    """overhead.py's parent here; each fresh process it starts comes back through this file,
    so it is emulated too (the capped torch by the environment it inherits)."""
    import common
    import overhead

    emulated = common.machine
    common.machine = lambda threads: {**emulated(threads), "emulated": EMULATED}  # overhead reads it at run time
    overhead.CHILD_COMMAND = [sys.executable, __file__, "--bench", "overhead"]
    overhead.RESULTS = overhead.RESULTS.with_name("overhead_avx2_emulated.json")
    sys.argv = ["bench/overhead.py", *rest]
    overhead.main()


def run_prefix_tail(rest: list[str]) -> None:
    """prefix_tail.py on this path (float32, the integer kernels): the cached prompt's tail."""
    import common
    import prefix_tail

    emulated = common.machine
    prefix_tail.machine = lambda threads: {**emulated(threads), "emulated": EMULATED}
    prefix_tail.RESULTS = prefix_tail.RESULTS.with_name("prefix_tail_avx2_emulated.json")
    sys.argv = ["bench/prefix_tail.py", *rest]
    prefix_tail.main()


def main() -> None:
    try:
        emulate_avx2()  # llmos blind to the avx512 and amx flags, its operators built for x86-64-v3
    except RuntimeError as exc:  # torch not capped by the environment
        sys.exit(f"{exc} (see the docstring)")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--llama-cpp", default=None)
    parser.add_argument("--bench", choices=("generate", "overhead", "prefix_tail"), default="generate")
    ours, rest = parser.parse_known_args()
    if ours.bench == "overhead":
        run_overhead(rest)
    elif ours.bench == "prefix_tail":
        run_prefix_tail(rest)
    else:
        run_generate(llama_cpp_build(ours.llama_cpp), rest)


if __name__ == "__main__":
    main()
