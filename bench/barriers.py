"""How fast one agent's decode step is as OpenMP's threads wait at its barriers.

A one-agent step ran ~200 small parallel regions (each projection, attention, the lm_head)
before drivers/team.h; between them libgomp's threads spin for a while, then sleep on a futex. Where they sleep, every
region pays a wake-up: on the 2-core AVX-512 EPYC (built for AVX2, bench/avx2_emulated.py)
OMP_WAIT_POLICY=PASSIVE took the step from ~4.2 to ~11.2 ms, which is what the 2-core Zen 3
(AVX2) machine's step took under its default policy (11.2 ms, bench/results/generate_avx2_seventh.json).
libgomp spins less once its threads outnumber the cores (a second team, made by a parallel
region started on another thread), and a hypervisor may deschedule a vCPU that spins.

This runs the engine's one-agent (and --rows) decode step in fresh processes, in turns: the
policy unset (what llmos runs with), ACTIVE, PASSIVE, and unset on one thread; and prints each
median step and its ratio to the unset one. If ACTIVE is much faster than unset here, the
threads sleep at barriers on this machine. `no_team` variants run without drivers/team.h's
thread team (LLMOS_THREAD_TEAM=0: a parallel region an operator); `beside_busy` ones with a
process spinning beside the step, taking a core; `unpinned` ones with the team's threads left
where the OS puts them (LLMOS_PIN_TEAM=0). Each prints the median step and, after it, the
mean: a busy neighbour's cost is in the slow steps. Results: results/barriers.json.

Since a quantized decode pass runs on one thread team (drivers/team.h: one parallel region a
pass, the leader taking the chunks its helpers have not), the policy barely moves the step. On
the AVX-512 EPYC (2026-12-05, the team pinned while a pass runs), medians of 3 rounds, one row
/ 4 rows (ms): unset 4.17 / 6.12, no_team 4.08 / 6.22, ACTIVE 4.02 / 6.18, PASSIVE 3.91 / 6.79,
PASSIVE without the team 10.07 / 13.17, one thread 6.01 / 9.72. Beside a busy process the
mean step (the median's is 8-14 ms every way) 8.57 / 12.26, unpinned 13.93 / 20.41, without the
team 13.41 / 17.55. Idle, pinned and unpinned read the same (`--rounds 8 --rows 1 --variants
default unpinned`: 3.81 against 3.91 ms, means 4.00 and 4.00; 6 rounds of 4 rows: 6.14 / 6.12).

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
NO_TEAM = {"LLMOS_THREAD_TEAM": "0"}  # each operator its own OpenMP region, as before drivers/team.h
UNPINNED = {"LLMOS_PIN_TEAM": "0"}  # the team's threads where the OS puts them
VARIANTS: dict[str, dict[str, str]] = {  # name -> what the child's environment adds
    "default": {}, "no_team": NO_TEAM, "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "passive_no_team": {"OMP_WAIT_POLICY": "PASSIVE", **NO_TEAM},
    "one_thread": {}, "beside_busy": {}, "beside_busy_no_team": NO_TEAM,
    "unpinned": UNPINNED, "beside_busy_unpinned": UNPINNED,
}
BUSY = "while True: pass"  # the process that takes a core during the beside_busy variants


def child(rows: int, threads: int) -> None:
    """In a fresh process: load the default model, decode `rows` agents' replies and print
    the median and mean step in ms as JSON (a busy neighbour shows in the mean: slow steps)."""
    import torch

    import llmos
    from llmos.drivers import compute
    from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams

    driver = llmos.load_model("smollm2").driver

    def measure() -> dict[str, float]:
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
        return {"step_ms": statistics.median(times) * 1e3, "mean_step_ms": statistics.fmean(times) * 1e3}

    print(json.dumps({**compute.call(measure),
                      "quantization": driver.engine.runner.quantization.describe()}))


def measure_in_child(variant: str, rows: int, threads: int) -> dict[str, Any]:
    env = {**os.environ, **VARIANTS[variant]}
    used = 1 if variant == "one_thread" else threads
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if variant.startswith("beside_busy") else None
    try:
        done = subprocess.run([sys.executable, __file__, "--child", str(rows), str(used)], env=env, check=True,
                              capture_output=True, text=True, timeout=600)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="turns of every variant, one after another")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4], help="agents decoding together")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="the variants to run (default: all; the first is the others' reference)")
    parser.add_argument("--save", type=Path, default=RESULTS)
    parser.add_argument("--child", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    use_model_cache("llmos-bench-barriers-")
    results: dict[str, Any] = {"machine": machine(args.threads), "steps": STEPS, "rounds": args.rounds, "rows": {}}
    for rows in args.rows:
        runs: dict[str, list[float]] = {name: [] for name in args.variants}
        means: dict[str, list[float]] = {name: [] for name in args.variants}
        for _ in range(args.rounds):
            for name in args.variants:
                measured = measure_in_child(name, rows, args.threads)
                runs[name].append(measured["step_ms"])
                means[name].append(measured["mean_step_ms"])
                results["quantization"] = measured["quantization"]
        medians = {name: statistics.median(times) for name, times in runs.items()}
        first = args.variants[0]
        mean_medians = {name: statistics.median(times) for name, times in means.items()}
        results["rows"][str(rows)] = {"step_ms": medians, "step_ms_runs": runs, "mean_step_ms": mean_medians,
                                      "mean_step_ms_runs": means,
                                      "over_first": {name: medians[name] / medians[first] for name in medians}}
        print(f"{rows} row(s): " + ", ".join(f"{name} {ms:.2f} ms (x{ms / medians[first]:.2f}, mean "
                                             f"{mean_medians[name]:.2f})" for name, ms in medians.items()))
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.save}")


if __name__ == "__main__":
    main()
