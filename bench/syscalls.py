"""Kernel overhead: the round trip of a no-op syscall, and spawning/reaping 10,000 processes.

Each figure is measured next to a baseline in the same run (a bare coroutine call, bare
anyio tasks), and the ratio printed, since this machine is shared and noisy.
Targets (issue 2): a no-op syscall under 20 us; 10,000 live sleeping processes under
200 MB of added memory.

    .venv/bin/python bench/syscalls.py [--calls 200000] [--procs 10000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

import anyio

import llmos
from llmos.syscalls import Sys

RESULTS = Path(__file__).parent / "results" / "syscalls.json"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _nothing() -> int:
    return 1


async def baseline_call_us(calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await _nothing()
    return (time.perf_counter() - started) / calls * 1e6


async def noop_syscall_us(calls: int) -> float:
    async def loop(sys: Sys) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await sys.getpid()
        return (time.perf_counter() - started) / calls * 1e6

    async with llmos.boot(None) as kernel:
        return (await kernel.wait((await kernel.spawn(loop)).pid)).result


async def baseline_tasks(n: int) -> dict[str, float]:
    gc.collect()
    before, started = rss_mb(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(anyio.sleep, 3600)
        await anyio.sleep(0.1)
        spawned = time.perf_counter() - started - 0.1
        added = rss_mb() - before
        tg.cancel_scope.cancel()
    return {"spawn_s": spawned, "added_mb": added}


async def spawn_and_reap(n: int) -> dict[str, float]:
    async def sleeper(sys: Sys) -> None:
        await sys.sleep(3600)

    gc.collect()
    before = rss_mb()
    async with llmos.boot(None) as kernel:
        started = time.perf_counter()
        pids = [(await kernel.spawn(sleeper, name="sleeper")).pid for _ in range(n)]
        spawned = time.perf_counter() - started
        await anyio.sleep(0.1)  # every process reaches its sleep syscall
        assert all(p.state.name == "BLOCKED" for p in kernel.ps())
        added = rss_mb() - before
        started = time.perf_counter()
        for pid in pids:
            kernel.kill(pid)
        for pid in pids:
            await kernel.wait(pid)
        reaped = time.perf_counter() - started
        assert not kernel.ps()
    return {"spawn_s": spawned, "added_mb": added, "kill_and_reap_s": reaped}


async def main(calls: int, procs: int) -> dict:
    base_us = await baseline_call_us(calls)
    sys_us = await noop_syscall_us(calls)
    base_tasks = await baseline_tasks(procs)
    llmos_procs = await spawn_and_reap(procs)
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "noop_syscall": {"calls": calls, "llmos_us": sys_us, "bare_await_us": base_us, "ratio": sys_us / base_us,
                         "target_us": 20, "meets_target": sys_us < 20},
        "processes": {"n": procs, "llmos": llmos_procs, "bare_anyio_tasks": base_tasks,
                      "memory_ratio": llmos_procs["added_mb"] / max(base_tasks["added_mb"], 0.1),
                      "spawn_ratio": llmos_procs["spawn_s"] / max(base_tasks["spawn_s"], 1e-6),
                      "target_added_mb": 200, "meets_target": llmos_procs["added_mb"] < 200},
    }


def report(r: dict) -> None:
    s, p = r["noop_syscall"], r["processes"]
    print(f"no-op syscall (getpid): {s['llmos_us']:.2f} us  vs bare await {s['bare_await_us']:.3f} us "
          f"(x{s['ratio']:.0f})  target < 20 us: {'yes' if s['meets_target'] else 'NO'}")
    lp, bt = p["llmos"], p["bare_anyio_tasks"]
    print(f"{p['n']} sleeping processes: spawn {lp['spawn_s']:.2f} s, +{lp['added_mb']:.1f} MB, "
          f"kill+reap {lp['kill_and_reap_s']:.2f} s")
    print(f"{p['n']} bare anyio tasks:      spawn {bt['spawn_s']:.2f} s, +{bt['added_mb']:.1f} MB "
          f"(memory x{p['memory_ratio']:.1f}, spawn time x{p['spawn_ratio']:.1f})  "
          f"target < 200 MB: {'yes' if p['meets_target'] else 'NO'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--procs", type=int, default=10_000)
    args = parser.parse_args()
    results = anyio.run(main, args.calls, args.procs)
    report(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {RESULTS}")
