"""How fast one agent's decode step is as OpenMP's threads wait at its barriers.

A one-agent step runs ~200 small parallel regions (each projection, attention, the lm_head);
between them libgomp's threads spin for a while, then sleep on a futex. Where they sleep, every
region pays a wake-up: on the 2-core AVX-512 EPYC (built for AVX2, bench/avx2_emulated.py)
OMP_WAIT_POLICY=PASSIVE took the step from ~4.2 to ~11.2 ms, which is what the 2-core Zen 3
(AVX2) machine's step took under its default policy (11.2 ms, bench/results/generate_avx2_seventh.json).
libgomp spins less once its threads outnumber the cores (a second team, made by a parallel
region started on another thread), and a hypervisor may deschedule a vCPU that spins.

This runs the engine's one-agent (and --rows) decode step in fresh processes, in turns: the
policy unset (what llmos runs with), ACTIVE, PASSIVE, and unset on one thread; and prints each
median step and its ratio to the unset one. If ACTIVE is much faster than unset here, the
threads sleep at barriers on this machine. Results: results/barriers.json.

Since a quantized decode pass runs on one thread team (drivers/team.h: one parallel region a
pass, its helpers spinning between operators), the policy barely moves the step: on the
AVX-512 EPYC, one row, 4.73 / 4.14 / 11.57 ms (unset / ACTIVE / PASSIVE) before, 4.64 / 4.67 /
4.47 ms after; 4 rows 6.87 / 7.63 / 14.74 before, 7.29 / 6.87 / 7.38 after.

    .venv/bin/python bench/barriers.py --rounds 3
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
from typing import Any

from common import machine, use_model_cache

RESULTS = Path(__file__).resolve().parent / "results" / "barriers.json"
STEPS = 80  # timed decode steps a measurement
VARIANTS: dict[str, dict[str, str]] = {  # name -> what the child's environment adds
    "default": {}, "active": {"OMP_WAIT_POLICY": "ACTIVE"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one_thread": {},
}


def child(rows: int, threads: int) -> None:
    """In a fresh process: load the default model, decode `rows` agents' replies and print
    the median step in ms as JSON."""
    import torch

    import llmos
    from llmos.drivers import compute
    from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams

    driver = llmos.load_model("smollm2").driver

    def measure() -> float:
        torch.set_num_threads(threads)
        jobs = [GenerationJob(id=i, pid=1, sampling=SamplingParams(max_tokens=STEPS + 40),
                              messages=(ChatMessage(role="user", content=f"Tell me a long story, number {i}."),))
                for i in range(rows)]
        for job in jobs:
            driver.prepare(job)
        while any(not job.token_ids for job in jobs):  # the prefill
            driver.engine.step(jobs, lambda pieces: None)
        times = []
        for _ in range(STEPS):
            begun = time.perf_counter()
            driver.engine.step([job for job in jobs if not job.finished], lambda pieces: None)
            times.append(time.perf_counter() - begun)
        return statistics.median(times) * 1e3

    print(json.dumps({"step_ms": compute.call(measure),
                      "quantization": driver.engine.runner.quantization.describe()}))


def measure_in_child(variant: str, rows: int, threads: int) -> dict[str, Any]:
    env = {**os.environ, **VARIANTS[variant]}
    used = 1 if variant == "one_thread" else threads
    done = subprocess.run([sys.executable, __file__, "--child", str(rows), str(used)], env=env, check=True,
                          capture_output=True, text=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="turns of every variant, one after another")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4], help="agents decoding together")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    use_model_cache("llmos-bench-barriers-")
    results: dict[str, Any] = {"machine": machine(args.threads), "steps": STEPS, "rounds": args.rounds, "rows": {}}
    for rows in args.rows:
        runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name in VARIANTS:
                measured = measure_in_child(name, rows, args.threads)
                runs[name].append(measured["step_ms"])
                results["quantization"] = measured["quantization"]
        medians = {name: statistics.median(times) for name, times in runs.items()}
        results["rows"][str(rows)] = {"step_ms": medians, "step_ms_runs": runs,
                                      "over_default": {name: medians[name] / medians["default"] for name in medians}}
        print(f"{rows} row(s): " + ", ".join(f"{name} {ms:.2f} ms (x{ms / medians['default']:.2f})"
                                             for name, ms in medians.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
