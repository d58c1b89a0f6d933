"""PNG charts of the benchmarks' agent sweeps: tokens/s and time to first token against the
number of agents, one line per system (matplotlib, `pip install -e '.[bench]'`).

bench/generate.py and bench/quant.py call `agents_chart` when they finish; run alone it
redraws every chart from the results already saved:

    .venv/bin/python bench/charts.py
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

# What each benchmark's systems are called on its chart, in drawing order; others are left out.
GENERATE_SYSTEMS = {"llmos": "llmos (agents through the kernel)", "bare_engine": "llmos engine, no kernel",
                    "llama_cpp_batched": "llama.cpp, all requests batched", "llama_cpp_sequential": "llama.cpp, one by one",
                    "hf_generate_batch": "transformers generate_batch", "static_batch": "transformers, static batch",
                    "sequential_generate": "transformers generate, one by one"}
QUANT_SYSTEMS = {"none": "llmos, quant none", "int8": "llmos, int8", "int4": "llmos, int4", "auto": "llmos, auto",
                 "llama.cpp batched": "llama.cpp, all requests batched", "llama.cpp": "llama.cpp, one by one"}


def agents_chart(rows: dict[str, dict[str, Any]], systems: dict[str, str], path: Path, title: str) -> Path | None:
    """Two panels, tokens/s and time to first token (p50) against agents, from `rows`
    ({"N": {system: {"tokens_per_s": ..., "ttft_p50_s": ...}}}). None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display here
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(no chart {path.name}: matplotlib is not installed; pip install -e '.[bench]')")
        return None
    ns = sorted(int(n) for n in rows)
    figure, (speed, first) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in systems.items():
        points = [(n, rows[str(n)][key]) for n in ns if isinstance(rows[str(n)].get(key), dict)]
        if not points:
            continue
        style = "-o" if key.startswith(("llmos", "bare", "none", "int", "auto")) else "--s"
        speed.plot([n for n, _ in points], [r["tokens_per_s"] for _, r in points], style, label=label)
        timed = [(n, r["ttft_p50_s"]) for n, r in points if "ttft_p50_s" in r]
        if timed:
            first.plot([n for n, _ in timed], [t for _, t in timed], style, label=label)
    for axis, ylabel in ((speed, "tokens/s (all agents)"), (first, "time to first token, p50 (s)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ns, [str(n) for n in ns])
        axis.set_xlabel("agents asking at once")
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
    first.set_yscale("log")
    speed.legend(fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"chart: {path}")
    return path


def machine_line(results: dict[str, Any]) -> str:
    box = results.get("machine", {})
    return f"{box.get('cpu', '?')}, {box.get('simd', '?')}, {box.get('threads', '?')} threads"


CHARTS = {"generate": (GENERATE_SYSTEMS, "SmolLM2-135M, 64 new tokens each"),
          "quant": (QUANT_SYSTEMS, "SmolLM2-135M quantized, engine driven directly")}


def redraw(*names: str) -> None:
    """The charts of these benchmarks' saved results (all of them by default)."""
    for name in names or tuple(CHARTS):
        systems, what = CHARTS[name]
        source = RESULTS / f"{name}.json"
        if not source.exists():
            continue
        results = json.loads(source.read_text())
        rows = results.get("throughput") or results.get("rows")
        if rows:
            agents_chart(rows, systems, RESULTS / f"{name}.png", f"{what} ({machine_line(results)})")


if __name__ == "__main__":
    redraw()
