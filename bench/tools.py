"""Tool-call overhead: an in-process tool call and a sandboxed one, against a plain function
call measured in the same run (this machine is shared and noisy, so ratios matter more).

- plain: `add(2, 3)` called directly, and `await` of an async one
- in-process, async tool: `sys.call_tool("add_async", ...)` (validation, capability, trace, timeout)
- in-process, sync tool: the same through a worker thread
- sandboxed, stdlib-only (the built-in run_python): a fresh child process per call
- sandboxed, a plugin-style tool whose module imports llmos: the child imports llmos too
- the grammar's cost per generated token: measured by the engine's constrained-decoding
  benchmark (bench/generate.py), not here; see `grammar_cost_per_token` below.

    .venv/bin/python bench/tools.py [--calls 2000] [--sandboxed 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

import llmos
from llmos.syscalls import Sys

RESULTS = Path(__file__).parent / "results" / "tools.json"


def add(a: int, b: int) -> int:
    return a + b


async def add_coroutine(a: int, b: int) -> int:
    return a + b


@llmos.tool(name="add_sync")
def add_sync(a: int, b: int) -> int:
    """Add two integers (sync: runs in a worker thread)."""
    return a + b


@llmos.tool(name="add_async")
async def add_async(a: int, b: int) -> int:
    """Add two integers (async: runs on the event loop)."""
    return a + b


@llmos.tool(name="add_sandboxed", trusted=False)
def add_sandboxed(a: int, b: int) -> int:
    """Add two integers in the sandbox (the child imports this module, hence llmos)."""
    return a + b


def plain_call_us(calls: int) -> dict[str, float]:
    started = time.perf_counter()
    for i in range(calls):
        add(i, 3)
    sync = (time.perf_counter() - started) / calls * 1e6

    async def awaited() -> float:
        started = time.perf_counter()
        for i in range(calls):
            await add_coroutine(i, 3)
        return (time.perf_counter() - started) / calls * 1e6

    return {"function_us": sync, "coroutine_us": anyio.run(awaited)}


async def per_call_ms(name: str, calls: int, arguments: Callable[[int], dict[str, Any]]) -> dict[str, float]:
    """Median and mean wall time of `calls` tool calls made by one process, in ms."""
    async def loop(sys: Sys) -> list[float]:
        times = []
        for i in range(calls):
            started = time.perf_counter()
            await sys.call_tool(name, **arguments(i))
            times.append((time.perf_counter() - started) * 1e3)
        return times

    async with llmos.boot(None, memory=None, mcp_servers=None, tools=[add_sync, add_async, add_sandboxed]) as kernel:
        status = await kernel.wait((await kernel.spawn(loop, caps={"tool.*"})).pid)
        assert status.ok, status.reason
        times = status.result
    return {"calls": calls, "median_ms": statistics.median(times), "mean_ms": statistics.fmean(times)}


def grammar_cost_per_token() -> dict[str, Any]:
    """The grammar's cost per generated token (constrained vs free decoding at batch 16) is
    measured next to the engine, by bench/generate.py; this reports its latest figure."""
    saved = Path(__file__).parent / "results" / "generate.json"
    figures = json.loads(saved.read_text()).get("constrained_vs_free") if saved.is_file() else None
    return figures or {"measured_by": "bench/generate.py (run it for the figure)"}


def run(calls: int, sandboxed: int) -> dict[str, Any]:
    plain = plain_call_us(calls)
    measure: Callable[..., Awaitable[dict[str, float]]] = per_call_ms
    in_async = anyio.run(measure, "add_async", calls, lambda i: {"a": i, "b": 3})
    in_sync = anyio.run(measure, "add_sync", calls, lambda i: {"a": i, "b": 3})
    python = anyio.run(measure, "run_python", sandboxed, lambda i: {"code": f"{i} + 3"})
    plugin = anyio.run(measure, "add_sandboxed", max(3, sandboxed // 4), lambda i: {"a": i, "b": 3})
    baseline_ms = plain["function_us"] / 1e3
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "plain_call": plain,
        "in_process_async_tool": in_async | {"ratio_to_plain": in_async["median_ms"] / baseline_ms},
        "in_process_sync_tool": in_sync | {"ratio_to_plain": in_sync["median_ms"] / baseline_ms},
        "sandboxed_stdlib_tool": python | {"ratio_to_in_process": python["median_ms"] / in_sync["median_ms"]},
        "sandboxed_tool_importing_llmos": plugin,
        "grammar_cost_per_token": grammar_cost_per_token(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--sandboxed", type=int, default=20)
    options = parser.parse_args()
    os.environ.setdefault("LLMOS_HOME", tempfile.mkdtemp(prefix="llmos-bench-"))
    results = run(options.calls, options.sandboxed)
    print(json.dumps(results, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
