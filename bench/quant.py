"""Quantized weights (drivers/quant.py) against none, and against llama.cpp, for one agent
and a few: the case decoding is memory-bound in, where streaming fewer bytes a token pays.

On the real SmolLM2-135M-Instruct, in this machine's default dtype: the llmos engine
driven directly (no kernel: what the weights change) with quant none, int8, int4 and what
"auto" chose here, each for 1, 2, 4 and 8 agents asking together, --repeat rounds,
interleaved (the machine is shared: the median round is reported); and llama.cpp
(llama-cpp-python, the same GGUF, one request at a time) where it is installed. Decode
tokens/s of the whole run (prefill included), time to first token, step time, and the
ratios to quant none and to llama.cpp one by one; and llama.cpp batching all the requests
(bench/llama_batch.py: one llama_decode a step, the same prompt token ids), once per N.

    .venv/bin/python bench/quant.py [--threads 2] [--ns 1 2 4 8] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

import llmos
from llmos.drivers import compute

from common import machine, questions, use_model_cache
import charts
import llama_batch
from generate import NEW_TOKENS, bare_engine, cold, llama_cpp_sequential, one_at_a_time

RESULTS = Path(__file__).parent / "results" / "quant.json"
KINDS = ("none", "int8", "int4", "auto")


def median_by(runs: list[dict[str, float]], key: str) -> dict[str, float]:
    ordered = sorted(runs, key=lambda run: run[key])
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    use_model_cache("llmos-bench-quant-")
    compute.call(torch.set_num_threads, args.threads)
    models = {kind: llmos.load_model("smollm2", quant=kind) for kind in KINDS}
    chosen = models["auto"].driver.engine.runner.quantization
    results: dict[str, Any] = {"machine": machine(threads=args.threads), "auto_chose": chosen.describe(),
                               "auto_measured_ms": {k: {str(r): t for r, t in v.items()}
                                                    for k, v in chosen.measured.items()},
                               "dtype": str(models["none"].driver.model.dtype), "rows": {}}
    print(f"auto chose {chosen.describe()} on this machine ({results['machine']['simd']})")
    peer = llama_cpp_sequential(questions(max(args.ns)), args.threads)
    for n in args.ns:
        qs = questions(n)
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
        for _ in range(args.repeat):
            for kind, model in models.items():  # interleaved: each round measures every kind once
                cold(model)
                runs[kind].append(compute.call(bare_engine, model.driver, qs))
        row = {kind: median_by(rounds, "tokens_per_s") for kind, rounds in runs.items()}
        if not isinstance(peer, str):
            row["llama.cpp"] = one_at_a_time(peer, n)
        batched = llama_batch.summary(models["none"], qs, args.threads, NEW_TOKENS)
        if not isinstance(batched, str):
            row["llama.cpp batched"] = batched
        base = row["none"]["tokens_per_s"]
        for kind in row:
            row[kind]["vs_none"] = row[kind]["tokens_per_s"] / base
            if "llama.cpp" in row:
                row[kind]["vs_llama_cpp"] = row[kind]["tokens_per_s"] / row["llama.cpp"]["tokens_per_s"]
        results["rows"][str(n)] = row
        print(f"N={n:2}: " + ", ".join(
            f"{kind} {r['tokens_per_s']:.1f} tok/s ({r['vs_none']:.2f}x none"
            + (f", {r['vs_llama_cpp']:.2f}x llama.cpp" if "vs_llama_cpp" in r else "") + ")"
            for kind, r in row.items()))
    if isinstance(peer, str):
        results["llama.cpp"] = peer
        print(peer)
    results["step_ms_median_one_agent"] = {kind: row["step_ms_median"] for kind, row in
                                           results["rows"][str(args.ns[0])].items() if "step_ms_median" in row}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    charts.redraw("quant")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
