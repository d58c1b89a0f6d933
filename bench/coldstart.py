"""Cold start: how long `llmos run --local generate "hi"` takes to print its first token, with
no daemon, in a fresh Python process each time (imports, model load, quantization, the
first generation), for --quant none and auto, alternating, --runs times each (the model's
safetensors and quantized weights already cached under LLMOS_HOME, as after the first run).

    .venv/bin/python bench/coldstart.py [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine, use_model_cache

RESULTS = Path(__file__).parent / "results" / "coldstart.json"
COMMAND = [sys.executable, "-m", "llmos.apps.cli", "run", "--local", "generate", "hi", "--max-tokens", "16"]


def first_token_s(quant: str) -> tuple[float, float]:
    """(seconds to the first byte the command prints, seconds to its end)."""
    began = time.perf_counter()
    run = subprocess.Popen(COMMAND, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           env={**os.environ, "LLMOS_QUANT": quant})
    assert run.stdout is not None
    run.stdout.read(1)
    first = time.perf_counter() - began
    run.stdout.read()
    if run.wait() != 0:
        raise RuntimeError(f"{' '.join(COMMAND)} failed with LLMOS_QUANT={quant}")
    return first, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    use_model_cache("llmos-bench-coldstart-")
    for quant in ("none", "auto"):
        first_token_s(quant)  # the caches (safetensors, quantized weights) made once, not timed
    times: dict[str, list[tuple[float, float]]] = {"none": [], "auto": []}
    for _ in range(args.runs):
        for quant in times:
            times[quant].append(first_token_s(quant))
    results = {"machine": machine(threads=0), "command": " ".join(COMMAND[1:]), "runs": args.runs,
               **{quant: {"first_token_s_median": statistics.median(t[0] for t in runs),
                          "first_token_s_all": [round(t[0], 2) for t in runs],
                          "whole_run_s_median": statistics.median(t[1] for t in runs)}
                  for quant, runs in times.items()}}
    for quant in times:
        print(f"--quant {quant}: first token after {results[quant]['first_token_s_median']:.2f} s (median of "
              f"{args.runs}: {results[quant]['first_token_s_all']}), whole run {results[quant]['whole_run_s_median']:.2f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
