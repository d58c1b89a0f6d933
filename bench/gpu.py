"""The throughput comparison on a CUDA machine, when one is present: the llmos engine (on
CUDA it decodes with FlashAttention over the block tables' K/V where flash-attn is
installed, else sdpa) against llama.cpp batching every request with all layers offloaded
(where its build has CUDA), for N agents asking together, tokens/s and time to first token.

Not run where it was written: the development machines have no GPU. Without a CUDA device
it says so, records that nothing was measured, and exits 0.

    .venv/bin/python bench/gpu.py [--ns 1 16 64] [--threads 2]

(Not named cuda.py: this folder is on sys.path when a benchmark runs, and torch imports a
package called `cuda`.)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

import llmos
from llmos.drivers import compute

import charts
import llama_batch
from common import machine, questions, use_model_cache
from generate import NEW_TOKENS, bare_engine, cold

RESULTS = Path(__file__).parent / "results" / "gpu.json"
SYSTEMS = {"llmos_engine": "llmos engine (CUDA)", "llama_cpp_batched": "llama.cpp batched, all layers on the GPU"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(threads=args.threads)}
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (run this on a machine with one)")
        results["skipped"] = "no CUDA device"
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        return
    use_model_cache("llmos-bench-gpu-")
    model = llmos.load_model("smollm2")  # on CUDA: bfloat16, FlashAttention 2 where flash-attn is installed
    results["device"] = torch.cuda.get_device_name()
    results["rows"] = {}
    for n in args.ns:
        qs = questions(n)
        cold(model)
        row = {"llmos_engine": compute.call(bare_engine, model.driver, qs),
               "llama_cpp_batched": llama_batch.summary(model, qs, args.threads, NEW_TOKENS, gpu_layers=-1)}
        results["rows"][str(n)] = row
        peer = row["llama_cpp_batched"]
        ratio = (f"{row['llmos_engine']['tokens_per_s'] / peer['tokens_per_s']:.2f}x llama.cpp batched"
                 if isinstance(peer, dict) else peer)
        print(f"N={n}: llmos {row['llmos_engine']['tokens_per_s']:.1f} tok/s ({ratio})")
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    charts.agents_chart(results["rows"], SYSTEMS, RESULTS.with_suffix(".png"),
                        f"SmolLM2-135M on {results['device']}")


if __name__ == "__main__":
    main()
