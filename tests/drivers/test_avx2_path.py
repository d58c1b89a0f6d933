"""The AVX2 path, tested on a machine with AVX-512 too: a CPU with AVX2 and no AVX-512 runs
llmos in float32 with its integer kernels (int8 through int16 codes, int4_linear), which the
suite's own run on an AVX-512 machine never takes. So there the operator and quantization
tests (the real model's among them) and the int8 decode passes through `decode_layers` run
again in a pytest of their own that runs as an AVX2-only CPU would (llmos.testing.emulate_avx2:
torch capped at AVX2, llmos blind to the avx512 flags, its operators built for x86-64-v3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmos.drivers.compute import cpu_flags
from llmos.testing import AVX2_EMULATION_ENV, AVX2_TORCH_ENV

ROOT = Path(__file__).resolve().parents[2]
TESTS = ["tests/drivers/test_paged.py", "tests/drivers/test_quant.py",
         # int8 in int16 codes is the path only AVX2 builds take (int4_linear is the same code on both)
         "tests/drivers/test_llama.py::test_decode_passes_through_decode_layers_give_the_per_layer_paths_tokens[int8]",
         # the race's bookkeeping is the same on every CPU: ~20 s spared
         "-k", "not measured_once_per_weight_shape and not cycles_through_copies"]

pytestmark = [
    pytest.mark.skipif("avx512f" not in cpu_flags(), reason="no AVX-512 here: the suite's own run is the AVX2 path"),
    pytest.mark.skipif(not {"avx2", "fma", "f16c"} <= cpu_flags(), reason="the CPU has no AVX2, FMA and F16C"),
    pytest.mark.skipif(os.environ.get(AVX2_EMULATION_ENV) == "1", reason="this run is the emulated one"),
]


@pytest.mark.model
def test_the_kernel_and_quantization_tests_pass_as_on_an_avx2_only_cpu():
    env = {**os.environ, **AVX2_TORCH_ENV, AVX2_EMULATION_ENV: "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200, check=False)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"{summary}\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    assert " passed" in summary and "skipped" not in summary, summary  # every test ran, on the integer path
