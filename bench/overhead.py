"""The kernel's overhead in fresh processes: N agents through llmos against the engine driven
directly, in pairs taking turns, in --processes processes one after another.

bench/generate.py measures the overhead in one process (--repeat x --pairs pairs). On the shared
2-core machines a process keeps a bias of its own for its life, larger than the 5% target: the
same code measured llmos at 0.90 of the bare engine in one process and 1.02 in the next (one
agent, 12 pairs each), and one run of either can be off by 10-30%. So this runs --pairs pairs in
each of --processes fresh processes (each loads the cached weights and warms both ways first),
and reports the median over every pair, each process's median, and how far those spread.
The overhead is the bare engine's tokens/s over llmos's, less one. With several --bursts
(each STEPS[/SECONDS[/STREAM[/PER_READER[/HANDOVER]]]]: the kernel's DECODE_BURST_STEPS, steps a
hand-off to the compute thread, DECODE_BURST_S, STREAM_EVERY_S, `inf` for text handed out at a
burst's end only, STREAM_EVERY_S_PER_READER and HANDOVER_WAIT_S; `8/0.1/inf` is the serve loop
before bursts streamed, `64/0.5/0.05/0` posting every 50 ms whatever the readers,
`64/0.5/0.05/0.0025/0` a mid-burst post that does not wait for the loop), the processes of each
take turns, in the other order every second round.
Results: results/overhead.json (or --save).

    .venv/bin/python bench/overhead.py [--agents 1] [--processes 5] [--pairs 8] [--threads 2]
        [--bursts 64 64/0.5/0.05/0.0025/0]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from llmos.kernel import params as kernel_params

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
MEASURES = ("tokens_per_s", "step_ms_median", "outside_share")  # of each run, as generate.py reports them
CHILD_COMMAND = [sys.executable, __file__]  # how a measuring process starts; avx2_emulated.py puts itself here


Runs = dict[str, list[dict[str, float]]]  # one process's runs: "llmos" and "bare_engine", in pair order


# the kernel's settings a --bursts spec sets, in its order; the first is a count, the rest seconds
BURST_SETTINGS = ("DECODE_BURST_STEPS", "DECODE_BURST_S", "STREAM_EVERY_S", "STREAM_EVERY_S_PER_READER",
                  "HANDOVER_WAIT_S")
SPEC_FORM = "STEPS[/SECONDS[/STREAM[/PER_READER[/HANDOVER]]]]"


def burst_setting(spec: str) -> dict[str, float]:
    """A --bursts spec as the kernel's settings by name, its defaults where left out."""
    parts = spec.split("/")
    try:
        if len(parts) > len(BURST_SETTINGS):
            raise ValueError(spec)
        steps = int(parts[0])
        seconds = [float(part) for part in parts[1:]]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec!r} is not {SPEC_FORM}, as 64 or 8/0.1/inf") from None
    given = dict(zip(BURST_SETTINGS, [steps, *seconds], strict=False))
    setting = {name: given.get(name, getattr(kernel_params, name)) for name in BURST_SETTINGS}
    _, burst_s, stream_s, per_reader_s, handover_s = setting.values()
    if steps < 1 or burst_s <= 0 or stream_s <= 0 or per_reader_s < 0 or handover_s < 0:
        raise argparse.ArgumentTypeError(f"{spec!r}: steps take 1 or more, seconds more than 0, per reader and "
                                         "hand-over 0 or more")
    return setting


def burst_spec(spec: str) -> str:
    """An argument of --bursts, checked."""
    burst_setting(spec)
    return spec


def child(agents: int, pairs: int, threads: int, bursts: str, llmos_first: bool) -> Runs:
    """One process's pairs: llmos and the bare engine in turns, the first pair's order given."""
    import anyio
    import generate
    import torch
    from common import questions, use_model_cache
    from llmos.drivers import compute

    import llmos

    for name, value in burst_setting(bursts).items():  # read by the generation loop at each burst
        setattr(kernel_params, name, value)
    use_model_cache("llmos-bench-generate-")  # the weights generate.py caches
    model = llmos.load_model("smollm2")
    compute.call(torch.set_num_threads, threads)  # OpenMP's thread count is per calling thread
    qs = questions(agents)

    def run(name: str) -> dict[str, float]:
        generate.settle()
        generate.cold(model)  # no run finds the last run's prompts in the prefix cache
        result = (anyio.run(lambda: generate.llmos_agents(model, qs)) if name == "llmos"
                  else compute.call(generate.bare_engine, model.driver, qs))
        return {measure: result[measure] for measure in MEASURES}

    for name in ("llmos", "bare_engine"):  # warm: the compute thread's team, the kernel's imports
        run(name)
    runs: Runs = {"llmos": [], "bare_engine": []}
    for pair in range(pairs):
        order = ("llmos", "bare_engine") if (pair % 2 == 0) == llmos_first else ("bare_engine", "llmos")
        for name in order:
            runs[name].append(run(name))
    return runs


def ratios(runs: Runs) -> list[float]:
    """llmos's tokens/s over the bare engine's, pair by pair."""
    return [mine["tokens_per_s"] / bare["tokens_per_s"]
            for mine, bare in zip(runs["llmos"], runs["bare_engine"], strict=True)]


def overhead(ratio: float) -> float:
    """The kernel's overhead, in percent, from llmos's tokens/s over the bare engine's."""
    return (1 / ratio - 1) * 100


def summary(processes: list[Runs]) -> dict[str, Any]:
    every = [ratio for runs in processes for ratio in ratios(runs)]
    per_process = [statistics.median(ratios(runs)) for runs in processes]

    def median(measure: str) -> dict[str, float]:  # over every run of each side
        return {name: statistics.median(run[measure] for runs in processes for run in runs[name])
                for name in ("llmos", "bare_engine")}

    return {"pairs": len(every), "overhead_pct": overhead(statistics.median(every)),
            "overhead_pct_by_process": [overhead(ratio) for ratio in per_process],
            "llmos_over_bare_engine": statistics.median(every),
            "llmos_over_bare_engine_quartiles": statistics.quantiles(every, n=4) if len(every) > 1 else every * 3,
            "step_ms_median": median("step_ms_median"), "outside_share_median": median("outside_share")}


def report(agents: int, bursts: str, result: dict[str, Any]) -> None:
    by_process = ", ".join(f"{pct:+.1f}%" for pct in result["overhead_pct_by_process"])
    low, _, high = result["llmos_over_bare_engine_quartiles"]
    steps, outside = result["step_ms_median"], result["outside_share_median"]
    print(f"N = {agents}, bursts {bursts}: kernel overhead {result['overhead_pct']:+.1f}% "
          f"(the median of {result['pairs']} pairs; llmos over the bare engine "
          f"{result['llmos_over_bare_engine']:.3f}, quartiles {low:.3f}-{high:.3f})")
    print(f"  by process: {by_process}")
    print(f"  engine step {steps['llmos']:.2f} ms under the kernel, {steps['bare_engine']:.2f} ms bare; the run's "
          f"time outside the steps {outside['llmos'] * 100:.1f}% / {outside['bare_engine'] * 100:.1f}% (medians)")


def parent(args: argparse.Namespace) -> None:
    from common import machine

    out: dict[str, Any] = {"machine": machine(args.threads), "threads": args.threads, "processes": args.processes,
                           "pairs_per_process": args.pairs, "agents": {}}
    for agents in args.agents:
        processes: dict[str, list[Runs]] = {bursts: [] for bursts in args.bursts}
        for index in range(args.processes):
            for bursts in args.bursts if index % 2 == 0 else reversed(args.bursts):  # no setting always first
                processes[bursts].append(run_child(agents, bursts, args, bare_first=index % 2 == 1))
                print(f"  N = {agents}, bursts {bursts}, process {index + 1}: llmos over the bare engine "
                      f"{statistics.median(ratios(processes[bursts][-1])):.3f}", flush=True)
        rows = {bursts: {**summary(runs), "runs": runs} for bursts, runs in processes.items()}
        out["agents"][str(agents)] = rows
        for bursts, row in rows.items():
            report(agents, bursts, row)
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(out, indent=2) + "\n")
    print(f"saved {args.save}")


def run_child(agents: int, bursts: str, args: argparse.Namespace, bare_first: bool) -> Runs:
    """One fresh process's pairs (`child`), its output's last line."""
    command = [*CHILD_COMMAND, "--child", "--agents", str(agents), "--pairs", str(args.pairs),
               "--threads", str(args.threads), "--bursts", bursts,
               *(["--bare-first"] if bare_first else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"a measuring process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1], help="agent counts to measure")
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per agent count")
    parser.add_argument("--pairs", type=int, default=8, help="pairs of runs (llmos, bare engine) per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bursts", "--burst-steps", type=burst_spec, nargs="+",
                        default=[str(kernel_params.DECODE_BURST_STEPS)],
                        help=f"{SPEC_FORM} (see above); several take turns by process")
    parser.add_argument("--save", type=Path, default=RESULTS, help=f"where the results go (default {RESULTS.name})")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-first", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.agents) < 1 or args.processes < 1 or args.pairs < 1:
        parser.error("--agents, --processes and --pairs take 1 or more")
    if args.child:
        [agents], [bursts] = args.agents, args.bursts
        print(json.dumps(child(agents, args.pairs, args.threads, bursts, llmos_first=not args.bare_first)))
    else:
        parent(args)


if __name__ == "__main__":
    main()
