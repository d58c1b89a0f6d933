"""The generic path (drivers/generic.py) on the real Gemma 3 270M: the engine's tokens/s at 1 and
8 concurrent sequences against HF's `model.generate` serving them one by one.

Greedy, 64 new tokens a sequence (eos ignored on both sides, so every sequence makes all 64),
distinct chat prompts of ~25 tokens, torch threads set (2 by default), both in the same dtype
(the engine's default on this machine, or --dtype). The engine is stepped directly (no kernel),
from an empty prefix cache each run; each measurement runs --repeat times, interleaved, and the
median is reported (the machine is shared). Needs the model: `llmos models pull gemma3-270m`.

    .venv/bin/python bench/generic.py [--threads 2] [--ns 1 8] [--repeat 3] [--dtype float32] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from llmos.drivers.transformers_driver import TransformersDriver, load_transformers_folder, requested_dtype
from llmos.drivers.weights import is_cached
from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams

from common import machine, questions, use_model_cache

RESULTS = Path(__file__).parent / "results" / "generic.json"
MODEL = "gemma3-270m"
NEW_TOKENS = 64


def prompts(driver: TransformersDriver, n: int) -> list[list[int]]:
    return [driver.tokenize([ChatMessage(role="user", content=q)]) for q in questions(n)]


def engine_rate(driver: TransformersDriver, batch: list[list[int]]) -> float:
    """Tokens/s of the engine making NEW_TOKENS for every prompt of `batch` at once."""
    driver.engine.blocks.clear_cache()  # else the prompts of the run before are found cached
    jobs = [GenerationJob(id=i, pid=1, sampling=SamplingParams(max_tokens=NEW_TOKENS), prompt_ids=list(ids))
            for i, ids in enumerate(batch)]
    started = time.perf_counter()
    while any(not j.finished for j in jobs):
        driver.engine.step([j for j in jobs if not j.finished], lambda pieces: None)
    wall = time.perf_counter() - started
    driver.engine.step([], lambda pieces: None)
    assert all(len(j.token_ids) == NEW_TOKENS for j in jobs)
    return len(batch) * NEW_TOKENS / wall


def generate_rate(driver: TransformersDriver, batch: list[list[int]]) -> float:
    """Tokens/s of HF's `model.generate` making NEW_TOKENS for each prompt, one after another."""
    started = time.perf_counter()
    for ids in batch:
        x = torch.tensor([ids])
        with torch.inference_mode():
            driver.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                  max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    return len(batch) * NEW_TOKENS / (time.perf_counter() - started)


def measure(driver: TransformersDriver, n: int, repeat: int) -> dict[str, Any]:
    batch = prompts(driver, n)
    engine, generate = [], []
    for _ in range(repeat):  # interleaved: a change in the machine's load hits both alike
        engine.append(engine_rate(driver, batch))
        generate.append(generate_rate(driver, batch))
    row = {"sequences": n, "prompt_tokens": [len(p) for p in batch], "engine_tokens_per_s": statistics.median(engine),
           "generate_tokens_per_s": statistics.median(generate), "engine_runs": engine, "generate_runs": generate}
    row["ratio"] = row["engine_tokens_per_s"] / row["generate_tokens_per_s"]
    print(f"{n} sequences: generic engine {row['engine_tokens_per_s']:.1f} tok/s, model.generate one by one "
          f"{row['generate_tokens_per_s']:.1f} tok/s: x{row['ratio']:.2f}   (runs: engine "
          f"{', '.join(f'{r:.1f}' for r in engine)}; generate {', '.join(f'{r:.1f}' for r in generate)})")
    return row


def load(dtype: str | None, threads: int) -> TransformersDriver:
    folder = use_model_cache("llmos-bench-generic-") / "models" / MODEL
    if not is_cached(folder):
        raise SystemExit(f"{folder}: not there; run `llmos models pull {MODEL}` (or the test suite's "
                         "tests/drivers/test_generic.py -m model, which converts it into .cache/models)")
    with requested_dtype(dtype):
        driver = load_transformers_folder(folder, MODEL)
    torch.set_num_threads(threads)  # loading sets the machine's default
    driver.engine.eos_ids = frozenset()  # every sequence makes NEW_TOKENS, as min_new_tokens makes generate's
    return driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 8], help="concurrent sequences to measure")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: the machine's")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    at_start = machine(args.threads)
    driver = load(args.dtype, args.threads)
    print(f"{MODEL}: {type(driver.engine.runner).__name__}, {driver.model.dtype}, {args.threads} threads, "
          f"load {at_start['loadavg_1m_at_start']:.1f}")
    engine_rate(driver, prompts(driver, 1))  # warm-up: first-call allocations, oneDNN's kernel choices
    rows = [measure(driver, n, args.repeat) for n in args.ns]
    results = {"machine": at_start, "model": MODEL, "dtype": str(driver.model.dtype).removeprefix("torch."),
               "runner": type(driver.engine.runner).__name__, "new_tokens": NEW_TOKENS, "repeat": args.repeat,
               "rows": rows, "loadavg_1m_at_end": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
