"""LoRA adapters served side by side (drivers/lora.py): 16 agents spread over 4 adapters of
SmolLM2 in one engine, against 16 agents on the base model alone (target: >= 70% of its
tokens/s), against 16 on one adapter, and against serving each fine-tune as a merged model of
its own (4 engines, each with a full copy of the weights, serving its 4 agents; one CPU serves
one model's batch at a time, so the groups run one after the other).

The engine driven directly (no kernel: what the adapters change), in the machine's default
dtype and quantization, exactly 64 new tokens an agent (greedy, end-of-sequence ignored, so
that every case does the same work whatever its adapters answer), rounds interleaved, medians
reported.
The adapters are random (rank --rank on every projection): throughput does not depend on
what they learned.

    .venv/bin/python bench/adapters.py [--threads 2] [--agents 16] [--adapters 4] [--rank 8] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import llmos
from llmos.drivers import compute
from llmos.drivers.engine import EngineConfig
from llmos.drivers.transformers_driver import TransformersDriver
from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams
from llmos.testing import merged_with_lora, random_lora

from common import machine, questions, use_model_cache

RESULTS = Path(__file__).parent / "results" / "adapters.json"
NEW_TOKENS = 64


def run(driver: Any, qs: list[str], adapters: list[str | None]) -> dict[str, float]:
    """Every question at once on `driver`'s engine, question i on adapters[i]; tokens/s of the run."""
    jobs = [GenerationJob(id=i, pid=1, sampling=SamplingParams(max_tokens=NEW_TOKENS), adapter=adapter,
                          messages=(ChatMessage(role="user", content=q),))
            for i, (q, adapter) in enumerate(zip(qs, adapters, strict=True))]
    for job in jobs:
        driver.prepare(job)
    driver.engine.eos_ids = frozenset()  # every agent decodes NEW_TOKENS
    driver.engine.blocks.clear_cache()  # every run computes its prompts
    started = time.perf_counter()
    while any(not j.finished for j in jobs):
        driver.engine.step([j for j in jobs if not j.finished], lambda pieces: None)
    driver.engine.step([], lambda pieces: None)
    wall = time.perf_counter() - started
    tokens = sum(len(j.token_ids) for j in jobs)
    assert tokens == NEW_TOKENS * len(jobs)
    return {"tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall}


def merged_groups(drivers: list[Any], qs: list[str]) -> dict[str, float]:
    """Each merged model serves its share of the questions, one model after another."""
    share = len(qs) // len(drivers)
    runs = [run(d, qs[i * share:(i + 1) * share], [None] * share) for i, d in enumerate(drivers)]
    tokens, seconds = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def weight_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--agents", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    use_model_cache("llmos-bench-adapters-")
    compute.call(torch.set_num_threads, args.threads)
    base = llmos.load_model("smollm2").driver
    names = [f"tune{i}" for i in range(args.adapters)]
    folder = Path(tempfile.mkdtemp(prefix="llmos-bench-adapters-"))
    folders = {name: random_lora(base.hf_model, folder / name, seed=i, rank=args.rank) for i, name in enumerate(names)}
    for name, path in folders.items():
        base.load_adapter(name, path)
    merged = [TransformersDriver(name, merged_with_lora(base.hf_model, path), base.tokenizer,
                                 config=EngineConfig(kv_cache_mb=512))
              for name, path in folders.items()]
    qs = questions(args.agents)
    spread = [names[i % len(names)] for i in range(args.agents)]
    cases = {"base": lambda: compute.call(run, base, qs, [None] * args.agents),
             "one adapter": lambda: compute.call(run, base, qs, [names[0]] * args.agents),
             f"{args.adapters} adapters": lambda: compute.call(run, base, qs, spread),
             f"{args.adapters} merged models": lambda: compute.call(merged_groups, merged, qs)}
    rounds: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
    for _ in range(args.repeat):
        for case, measure in cases.items():  # interleaved: each round measures every case once
            rounds[case].append(measure())
    rows = {case: sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2] for case, runs in rounds.items()}
    for row in rows.values():
        row["vs_base"] = row["tokens_per_s"] / rows["base"]["tokens_per_s"]
    adapter_bytes = sum(p.stat().st_size for p in folder.rglob("adapter_model.safetensors"))
    results = {"machine": machine(threads=args.threads), "dtype": str(base.model.dtype),
               "quantization": base.engine.runner.quantization.describe(), "agents": args.agents,
               "adapters": args.adapters, "rank": args.rank, "rows": rows,
               "all_runs_tokens_per_s": {c: [round(r["tokens_per_s"], 1) for r in runs] for c, runs in rounds.items()},
               "memory": {"base_weights_bytes": weight_bytes(base.model), "adapters_bytes": adapter_bytes,
                          "merged_models_bytes": sum(weight_bytes(d.model) for d in merged)}}
    for case, row in rows.items():
        print(f"{case:>18}: {row['tokens_per_s']:6.1f} tok/s  ({row['vs_base']:.2f}x base)")
    spread_row, merged_row = rows[f"{args.adapters} adapters"], rows[f"{args.adapters} merged models"]
    print(f"{args.adapters} adapters in one batch vs {args.adapters} merged models: "
          f"{spread_row['tokens_per_s'] / merged_row['tokens_per_s']:.2f}x; memory: adapters "
          f"{adapter_bytes / 2**20:.1f} MiB beside the base's {results['memory']['base_weights_bytes'] / 2**20:.0f} MiB, "
          f"merged models {results['memory']['merged_models_bytes'] / 2**20:.0f} MiB")
    print(f"machine: {results['machine']['simd']}, {results['dtype']}, quantization {results['quantization']}; "
          f"medians of {args.repeat}: {json.dumps(results['all_runs_tokens_per_s'])}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
