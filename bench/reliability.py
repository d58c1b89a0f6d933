"""Durable processes, measured: what survives kill -9, how fast a cluster takes over a dead
kernel's work, and what durability costs.

  (1) kill -9 loop (llmos.crashloop): --cycles kernels in a row (100 by default) on one
      LLMOS_HOME, each killed with SIGKILL at a random moment while --agents durable agents
      work (each turn: a generation on the real SmolLM2, a tool call, a memory write, a
      console line acknowledging it), then one kernel that runs them to their end. Counted
      from ledgers kept outside the kernel: acknowledged memory writes lost or stored twice,
      durable processes lost, generations and tool calls run again (those a kernel died
      inside, whose result was not recorded, apart from any other: expected 0).
  (2) cluster take-over: a throwaway PostgreSQL, a model server (`llmos serve` on SmolLM2)
      and three `llmos serve --cluster` kernels (remote driver); durable processes spread
      over them; --kills times, the kernel running the most is killed (SIGKILL) and
      replaced, and for each of its processes the time from the kill until it goes on on
      another kernel (a new syscall recorded there) is measured: p50, p95, with the steps
      each had recorded (a resumed process replays them before its next live call).
  (3) overhead: in one process on the real model, 16 durable against 16 ordinary processes
      each generating --max-tokens tokens (aggregate tokens/s), and a no-op syscall
      (getpid) round trip, alternating --repeat times; medians and the ratio.

    .venv/bin/python bench/reliability.py [--cycles 100] [--kills 10] [--repeat 3] [--threads 2]
                                          [--fake] [--only loop|cluster|overhead]

Writes bench/results/reliability.json. `--fake` runs (1) on llmos.testing.FakeDriver.
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio

from common import machine, percentile, questions, use_model_cache

RESULTS = Path(__file__).parent / "results" / "reliability.json"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- (1) kill -9 loop -------------------------------------------------------------------------------
def kill_loop(args: argparse.Namespace) -> dict[str, Any]:
    from llmos.crashloop import crash_loop

    work = Path(tempfile.mkdtemp(prefix="llmos-crashloop-"))
    home = work / "home"  # a fresh one, whatever LLMOS_HOME says: earlier records would count
    home.mkdir()
    (home / "models").symlink_to(use_model_cache() / "models", target_is_directory=True)
    report = crash_loop(home, work / "ledgers", cycles=args.cycles, agents=args.agents, turns=args.turns,
                        model=None if args.fake else "smollm2", seed=args.seed, final_timeout_s=3600)
    row = report.as_dict()
    row["model"] = "FakeDriver" if args.fake else "smollm2"
    progress(f"kill -9 loop: {json.dumps(row)}")
    return row


# -- (2) cluster take-over ----------------------------------------------------------------------------
SLOW_APP = """
async def main(sys, steps):
    for i in range(int(steps)):
        await sys.sleep(0.1)
        await sys.write(f"step {i}\\n")
    return "done"
"""


def cluster_takeover(args: argparse.Namespace) -> dict[str, Any]:
    from llmos.testing import llmos_daemon, postgres_server

    base = Path(tempfile.mkdtemp(prefix="llmos-cluster-"))
    app = base / "slow.py"
    app.write_text(SLOW_APP)
    home = use_model_cache()
    with ExitStack() as stack:
        database = stack.enter_context(postgres_server())
        model_url, _ = stack.enter_context(llmos_daemon("--model", "smollm2", env={"LLMOS_HOME": str(home)}))
        model = f"openai:{model_url}/v1#smollm2"

        def kernel(n: int) -> tuple[str, Any]:
            kernel_home = base / f"kernel{n}"
            kernel_home.mkdir()
            return stack.enter_context(llmos_daemon("--cluster", database, "--capacity", "8", "--model", model,
                                                    env={"LLMOS_HOME": str(kernel_home)}))

        kernels = [kernel(n) for n in range(3)]
        latencies, steps = anyio.run(_kill_and_measure, kernels, kernel, app, args)
    return {"kernels": 3, "kills": args.kills, "processes_taken_over": len(latencies),
            "recorded_steps_at_kill_p50": percentile(steps, 50), "recorded_steps_at_kill_max": max(steps),
            "kill_to_resume_p50_s": percentile(latencies, 50), "kill_to_resume_p95_s": percentile(latencies, 95),
            "kill_to_resume_max_s": max(latencies), "latencies_s": [round(x, 3) for x in latencies]}


async def _kill_and_measure(kernels: list[tuple[str, Any]], start_kernel: Any, app: Path,
                            args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Latencies from kill to going on elsewhere, and each taken-over process's recorded
    steps at the kill (a resumed process replays them all before its next live call)."""
    from llmos.server.client import DaemonClient

    latencies: list[float] = []
    steps: list[float] = []
    ids = [(await DaemonClient(kernels[0][0]).spawn(f"{app}:main", [100_000], durable=True)).durable_id
           for _ in range(args.cluster_processes)]
    started = len(kernels)
    for kill in range(args.kills):
        with anyio.fail_after(120):  # every process running, and past its first steps
            while not all(i.state.value == "running" and i.steps > 2
                          for i in await DaemonClient(kernels[0][0]).durable_ps()):
                await anyio.sleep(0.1)
        listing = await DaemonClient(kernels[0][0]).durable_ps()
        victim = max(range(len(kernels)), key=lambda k: sum(i.kernel_url == kernels[k][0] for i in listing))
        victim_url, victim_process = kernels.pop(victim)
        observer = DaemonClient(kernels[0][0])
        killed_at = time.monotonic()
        victim_process.send_signal(signal.SIGKILL)
        victim_process.wait()
        on_victim = {i.id for i in listing if i.kernel_url == victim_url}
        # What the dead kernel recorded is final now: a process goes on once one more step is recorded.
        steps_at_kill = {i.id: i.steps for i in await observer.durable_ps() if i.id in on_victim}
        steps += steps_at_kill.values()
        pending = dict(steps_at_kill)
        with anyio.fail_after(120):
            while pending:
                for info in await observer.durable_ps():
                    if info.id in pending and info.kernel_url not in (None, victim_url) \
                            and info.steps > pending[info.id]:
                        latencies.append(time.monotonic() - killed_at)
                        del pending[info.id]
                await anyio.sleep(0.05)
        progress(f"kill {kill + 1}: {len(steps_at_kill)} processes went on elsewhere, "
                 f"latest after {latencies[-1]:.2f} s" if steps_at_kill else f"kill {kill + 1}: the kernel ran none")
        kernels.append(start_kernel(started))
        started += 1
    for durable_id in ids:
        await DaemonClient(kernels[0][0]).durable_cancel(durable_id, "the bench is over")
    return latencies, steps


# -- (3) overhead ---------------------------------------------------------------------------------------
GENERATING_APP = """
async def main(sys, question, max_tokens):
    reply = await sys.chat(question, max_tokens=int(max_tokens), temperature=0)
    return reply.completion_tokens
"""
NOOP_APP = """
import time

async def main(sys, n):
    began = time.perf_counter()
    for _ in range(int(n)):
        await sys.getpid()
    return (time.perf_counter() - began) / int(n)
"""


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    use_model_cache()
    folder = Path(tempfile.mkdtemp(prefix="llmos-overhead-"))
    (folder / "generating.py").write_text(GENERATING_APP)
    (folder / "noop.py").write_text(NOOP_APP)
    return anyio.run(_overhead, folder, args)


async def _overhead(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import llmos
    from llmos.drivers import compute

    model = llmos.load_model("smollm2")
    compute.call(torch.set_num_threads, args.threads)
    rates: dict[str, list[float]] = {"durable": [], "ordinary": []}
    noop: dict[str, list[float]] = {"durable": [], "ordinary": []}
    first = 0
    async with llmos.boot(model, mcp_servers=None) as kernel:
        for round_ in range(args.repeat + 1):  # the first round warms up and is not counted
            for kind in ("durable", "ordinary") if round_ % 2 else ("ordinary", "durable"):
                asks = questions(args.processes, first)
                first += args.processes
                rate = await _generate(kernel, folder, asks, args.max_tokens, kind == "durable")
                per_call = await _run(kernel, f"{folder / 'noop.py'}:main", [args.noop_calls], kind == "durable")
                if round_:
                    rates[kind].append(rate)
                    noop[kind].append(per_call)
                progress(f"round {round_} {kind}: {rate:.1f} tokens/s, no-op syscall {per_call * 1e6:.0f} us")
    tokens = {kind: statistics.median(values) for kind, values in rates.items()}
    calls = {kind: statistics.median(values) for kind, values in noop.items()}
    return {"processes": args.processes, "max_tokens": args.max_tokens, "repeat": args.repeat,
            "tokens_per_s": tokens, "tokens_per_s_runs": rates,
            "durable_over_ordinary_tokens_per_s": tokens["durable"] / tokens["ordinary"],
            "noop_syscall_us": {kind: value * 1e6 for kind, value in calls.items()},
            "noop_syscall_runs_us": {kind: [v * 1e6 for v in values] for kind, values in noop.items()},
            "durable_noop_cost_us": (calls["durable"] - calls["ordinary"]) * 1e6,
            "database": "SQLite (LLMOS_HOME/durable, WAL, synchronous=NORMAL)",
            "torch_threads": compute.call(torch.get_num_threads)}


async def _generate(kernel: Any, folder: Path, asks: list[str], max_tokens: int, durable: bool) -> float:
    began = time.perf_counter()
    results: list[int] = []

    async def one(question: str) -> None:
        results.append(await _run(kernel, f"{folder / 'generating.py'}:main", [question, max_tokens], durable))

    async with anyio.create_task_group() as tg:
        for question in asks:
            tg.start_soon(one, question)
    return sum(results) / (time.perf_counter() - began)


async def _run(kernel: Any, app: str, args: list[Any], durable: bool) -> Any:
    info = await kernel.spawn(app, *args, durable=durable)
    status = await (kernel.durability.wait(info.durable_id) if durable else kernel.wait(info.pid))
    if not status.ok:
        raise RuntimeError(f"{app} {status.state.name}: {status.reason}")
    return status.result


# -- main ---------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=100, help="kernels killed in the kill -9 loop")
    parser.add_argument("--agents", type=int, default=4, help="durable agents in the loop")
    parser.add_argument("--turns", type=int, default=30, help="turns of each agent")
    parser.add_argument("--seed", type=int, default=0, help="of the random kill moments")
    parser.add_argument("--fake", action="store_true", help="the loop on FakeDriver instead of SmolLM2")
    parser.add_argument("--kills", type=int, default=10, help="kernels killed in the cluster")
    parser.add_argument("--cluster-processes", type=int, default=6, help="durable processes in the cluster")
    parser.add_argument("--processes", type=int, default=16, help="processes of the overhead run")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens each generates in the overhead run")
    parser.add_argument("--noop-calls", type=int, default=300, help="getpid calls per no-op measurement")
    parser.add_argument("--repeat", type=int, default=3, help="alternations of the overhead run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--only", choices=("loop", "cluster", "overhead"), help="run one part")
    args = parser.parse_args()

    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() and args.only else {}
    results["machine"] = machine(args.threads)
    results["command"] = " ".join(["bench/reliability.py", *sys.argv[1:]])
    parts = {"loop": kill_loop, "cluster": cluster_takeover, "overhead": overhead}
    for name, part in parts.items():
        if args.only in (None, name):
            results[name] = part(args)
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
