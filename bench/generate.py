"""Many agents, one model: llmos's engine against the ways a local model is usually served.

All in one run, on the real SmolLM2-135M-Instruct (greedy, torch threads set). The
baselines run in float32, the precision the issue's table and most local setups use;
llmos runs in its default dtype for this machine (bfloat16 where the CPU multiplies it
natively, see drivers/transformers_driver.py) and (a) is also measured in that dtype:
  (a) sequential `model.generate`, one request after another
  (b) one static padded batch through `model.generate`
  (c) transformers' continuous batching, `model.generate_batch`
  (d) llama.cpp (llama-cpp-python) on the same GGUF, one by one (skipped if not installed),
      and batching all N requests in one llama_decode a step (bench/llama_batch.py), on the
      prompt token ids llmos's driver makes
  (e) llmos: N agent processes, each calling `sys.chat` through the kernel
  (f) the llmos engine driven directly, without the kernel (to measure the kernel's overhead)
For N = 1, 4, 16, 64: aggregate tokens/s, time to first token p50/p95, per-request latency,
and ratios to (a) and (d). (d), (e) and (f) run in --repeat rounds, one after another in each
round, (e) and (f) --pairs times each, taking turns at going first; the median run of each is
reported, llmos's ratio to llama.cpp is the median of the rounds' ratios, and to the bare
engine the median over every pair (the machine is shared: one run can be off by tens of
percent, and the kernel's overhead is a few). (c) runs
after everything else, as its worker thread slows later torch work in the process. Then:
requests arriving at ~2/s; 16 agents sharing a 600-token system prompt with and without
prefix caching; a short request behind 16 long ones under FIFO and round-robin. (a) and
(d) serve one request at a time, so their rate does not depend on N: they run
--sequential requests, and N requests arriving together are given those requests'
measured times back to back.

    .venv/bin/python bench/generate.py [--quick] [--threads 2] [--ns 1 4 16 64] [--repeat 5] [--pairs 3]
    .venv/bin/python bench/generate.py --runs-only --runs short_behind_long   # results/generate_runs.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import torch

import llmos
from llmos.drivers.engine import EngineConfig
from llmos.drivers.transformers_driver import TransformersDriver
from llmos.drivers import compute
from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams

import charts
import llama_batch
from common import (machine, median_run, questions,
                    summarize, use_model_cache)

RESULTS = Path(__file__).parent / "results" / "generate.json"
RUNS_RESULTS = RESULTS.with_name("generate_runs.json")  # --runs-only
NEW_TOKENS = 64


# -- baselines -------------------------------------------------------------------------------------
def chat_ids(tok: Any, question: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
                ["input_ids"])


class FirstToken:
    """A stopping criterion that never stops, only notes when the first new token came."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        self.at = self.at or time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


Measured = list[tuple[float, float, int]]  # per request: first-token time, duration, tokens


def one_at_a_time(measured: Measured, n: int) -> dict[str, float]:
    """What a server that takes one request at a time gives n requests that arrive together:
    request i runs after the i before it (the measured requests, reused in turn)."""
    ttfts, latencies, tokens, clock = [], [], 0, 0.0
    for i in range(n):
        first, duration, count = measured[i % len(measured)]
        ttfts.append(clock + first)
        latencies.append(clock + duration)
        tokens += count
        clock += duration
    return summarize(ttfts, latencies, tokens, clock)


def sequential_generate(model: Any, tok: Any, qs: list[str]) -> Measured:
    """(a): each request alone through model.generate."""
    measured = []
    for q in qs:
        ids = torch.tensor([chat_ids(tok, q)])
        first, started = FirstToken(), time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                             stopping_criteria=[first])
        took = time.perf_counter() - started
        measured.append(((first.at or started) - started, took, out.shape[1] - ids.shape[1]))
    return measured


def static_batch_generate(model: Any, tok: Any, qs: list[str]) -> dict[str, float]:
    """(b): one left-padded batch; everyone's first token comes after the whole batch's prefill."""
    tok.padding_side = "left"
    rows = [chat_ids(tok, q) for q in qs]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    first, started = FirstToken(), time.perf_counter()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                         stopping_criteria=[first], pad_token_id=tok.pad_token_id)
    wall = time.perf_counter() - started
    new = out[:, width:]
    tokens = int(((new != tok.pad_token_id) & (new != tok.eos_token_id)).sum()) + len(qs)
    return summarize([first.at - started] * len(qs), [wall] * len(qs), tokens, wall)


def hf_generate_batch(model: Any, tok: Any, qs: list[str]) -> dict[str, float] | str:
    """(c): transformers' own continuous batching (aggregate only: it reports no first-token times)."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
        started = time.perf_counter()
        outputs = model.generate_batch(inputs=[chat_ids(tok, q) for q in qs], generation_config=config,
                                       progress_bar=False)
        wall = time.perf_counter() - started
        tokens = sum(len(o.generated_tokens) for o in outputs.values())
        return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}
    except Exception as exc:  # its CPU path changes between releases; say why it did not run
        return f"skipped: {type(exc).__name__}: {exc}"[:300]


def llama_cpp_sequential(qs: list[str], threads: int) -> Measured | str:
    """(d): llama.cpp through llama-cpp-python, on the same GGUF, one request at a time, in a
    process of its own (bench/llama_isolated.py says why)."""
    import llama_isolated

    try:
        return llama_isolated.sequential(qs, threads, NEW_TOKENS)
    except ImportError:
        return "skipped: llama-cpp-python is not installed (pip install llama-cpp-python to compare)"


# -- llmos -------------------------------------------------------------------------------------------
async def llmos_agents(model: llmos.Model, qs: list[str], *, system: str | None = None, policy: str = "fifo",
                       arrivals: list[float] | None = None, max_tokens: int = NEW_TOKENS,
                       quantum: int = 32, max_batch: int = 64) -> dict[str, Any]:
    """(e): one process per question, each streaming its reply through `sys.chat`."""
    async def agent(sys: llmos.Sys, question: str, tokens: int, arrived: float) -> tuple[float, float, int]:
        stream = await sys.chat(question, system=system, stream=True, max_tokens=tokens)
        first = None
        async for _ in stream:
            first = first or time.perf_counter()
        return (first or time.perf_counter()) - arrived, time.perf_counter() - arrived, stream.reply.completion_tokens

    arrivals = arrivals or [0.0] * len(qs)
    clock = StepClock(model.driver)
    async with llmos.boot(model, policy=policy, quantum=quantum, max_batch=max_batch) as kernel:
        started = time.perf_counter()
        pids = []
        for q, at, tokens in zip(qs, arrivals, _token_budgets(qs, max_tokens), strict=True):
            await anyio.sleep(max(0.0, started + at - time.perf_counter()))
            pids.append((await kernel.spawn(agent, q, tokens, time.perf_counter())).pid)
        results = [(await kernel.wait(pid)).result for pid in pids]
        wall = time.perf_counter() - started
    clock.stop()
    return {**summarize([r[0] for r in results], [r[1] for r in results], sum(r[2] for r in results), wall),
            **clock.summary(wall), "ttfts": [r[0] for r in results]}


class StepClock:
    """Times the engine's steps during a kernel run: the time between one step's end and the
    next one's start is what the kernel adds (scheduling, delivering text, waking threads),
    measured directly rather than as a difference of two noisy runs. It wraps the engine's
    step (run on the compute thread), so the hop to that thread counts as a gap."""

    def __init__(self, driver: Any) -> None:
        self.engine, self.spans = driver.engine, []
        step = self.engine.step

        def timed(running: Any, emit: Any) -> None:
            begun = time.perf_counter()
            step(running, emit)
            self.spans.append((begun, time.perf_counter()))

        self.engine.step = timed

    def stop(self) -> None:
        del self.engine.step  # the class's own method again

    def summary(self, wall: float) -> dict[str, float]:
        """`outside_share`: the part of the run's `wall` time in which the engine was not
        stepping (spawning, gathering the first batch, the gaps, the processes' exits)."""
        gaps = [b - a for (_, a), (b, _) in zip(self.spans, self.spans[1:], strict=False)]
        inside = sum(end - begun for begun, end in self.spans)
        return {"steps": len(self.spans), "step_ms_median": statistics.median(e - b for b, e in self.spans) * 1e3,
                "gap_ms_median": statistics.median(gaps) * 1e3 if gaps else 0.0,
                "gap_share": sum(gaps) / (inside + sum(gaps)) if gaps else 0.0,
                "outside_share": outside_share(wall, inside)}


def outside_share(wall: float, stepping: float) -> float:
    """The share of a run's `wall` seconds in which the engine was not stepping."""
    return max(0.0, wall - stepping) / wall


def cold(model: llmos.Model) -> None:
    """Empty the prefix cache, so a run does not reuse the prompts an earlier run computed."""
    model.driver.engine.blocks.clear_cache()


def _token_budgets(qs: list[str], max_tokens: int | list[int]) -> list[int]:
    return max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(qs)


def bare_engine(driver: TransformersDriver, qs: list[str]) -> dict[str, float]:
    """(f): the engine stepped in a plain loop, no kernel, no processes, no event loop."""
    jobs = [GenerationJob(id=i, pid=1, sampling=SamplingParams(max_tokens=NEW_TOKENS),
                          messages=(ChatMessage(role="user", content=q),)) for i, q in enumerate(qs)]
    started = time.perf_counter()
    firsts: dict[int, float] = {}
    steps = []
    for job in jobs:
        driver.prepare(job)
    while any(not j.finished for j in jobs):
        begun = time.perf_counter()
        driver.engine.step([j for j in jobs if not j.finished], lambda batch: None)
        now = time.perf_counter()
        steps.append(now - begun)
        for j in jobs:
            if j.token_ids and j.id not in firsts:
                firsts[j.id] = now - started
    wall = time.perf_counter() - started
    return {**summarize(list(firsts.values()), [wall] * len(jobs), sum(len(j.token_ids) for j in jobs), wall),
            "step_ms_median": statistics.median(steps) * 1e3, "outside_share": outside_share(wall, sum(steps))}


# -- the runs ------------------------------------------------------------------------------------------
def throughput(model: llmos.Model, baseline: llmos.Model, ns: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """The table: the transformers baselines once per N; llama.cpp, llmos and the bare engine
    in --repeat rounds, one after another in each (llmos and the bare engine --pairs times),
    and the ratios within each round (the median of those is what a slow spell of the shared
    machine disturbs least). transformers'
    generate_batch runs after everything else (`hf_generate_batch_rows`): its worker thread
    leaves a second OpenMP team behind, which would slow every later torch step."""
    hf, tok = baseline.driver.hf_model, baseline.driver.hf_tokenizer
    out: dict[str, Any] = {}
    seq = compute.call(sequential_generate, hf, tok, questions(args.sequential))
    other_dtype = model.driver.model.dtype != hf.dtype
    seq_same = (compute.call(sequential_generate, model.driver.hf_model, tok, questions(args.sequential)) if other_dtype
                else None)
    for n in ns:
        qs = questions(n)
        row: dict[str, Any] = {"sequential_generate": one_at_a_time(seq, n)}
        if seq_same is not None:
            row[f"sequential_generate_{dtype_name(model)}"] = one_at_a_time(seq_same, n)
        row["static_batch"] = compute.call(static_batch_generate, hf, tok, qs)
        runs: dict[str, list[Any]] = {"llama_cpp_sequential": [], "llama_cpp_batched": [], "llmos": [],
                                      "bare_engine": []}
        for round_ in range(args.repeat):  # one after another, so a slow spell of the machine hits all
            cpp = llama_cpp_sequential(questions(args.sequential), args.threads)
            runs["llama_cpp_sequential"].append(cpp if isinstance(cpp, str) else one_at_a_time(cpp, n))
            runs["llama_cpp_batched"].append(llama_batch.summary(model, qs, args.threads, NEW_TOKENS))
            for pair in range(args.pairs):
                for name in ENGINE_ORDERS[(round_ * args.pairs + pair) % 2]:
                    settle()
                    cold(model)  # else a run would find the last run's very prompts in the prefix cache
                    runs[name].append(anyio.run(lambda: llmos_agents(model, qs)) if name == "llmos"
                                      else compute.call(bare_engine, model.driver, qs))
                    runs[name][-1].pop("ttfts", None)
        row |= {name: r[0] if isinstance(r[0], str) else median_run(r) for name, r in runs.items()}
        row["paired_ratios"] = paired_ratios(runs, args.pairs)
        row["kernel_time_share"] = kernel_time_share(runs)
        out[str(n)] = row
        report_throughput(n, row)
    return out


# Which of llmos and the bare engine runs first, by pair (counted across rounds): whichever ran
# right after llama.cpp's 64-agent process lost time (64 agents, 4 rounds each way on a 2-core
# Zen 3: llmos behind the bare engine by +8.3% run so, +2.5% without llama.cpp between), so the
# pairs take turns.
ENGINE_ORDERS = (("llmos", "bare_engine"), ("bare_engine", "llmos"))
SETTLE_S = 1.0  # a pause before each engine run, for the machine to finish what the last run left


def settle() -> None:
    time.sleep(SETTLE_S)


def paired_ratios(runs: dict[str, list[Any]], pairs: int = 1) -> dict[str, float]:
    """llmos's tokens/s over each peer's in the same round, the median over the rounds. A round
    runs llmos and the bare engine `pairs` times each, taking turns: llmos over the bare engine
    is the median over every such pair (the kernel's few percent are what the target bounds, and
    one run of either can be off by ten); over llama.cpp (one run a round), llmos's median run
    of the round counts."""
    per_round = [statistics.median(run["tokens_per_s"] for run in runs["llmos"][i:i + pairs])
                 for i in range(0, len(runs["llmos"]), pairs)]
    ratios = {}
    for peer in ("llama_cpp_sequential", "llama_cpp_batched"):
        each = [mine / theirs["tokens_per_s"] for mine, theirs in zip(per_round, runs[peer], strict=True)
                if isinstance(theirs, dict)]
        if each:
            ratios[f"llmos_over_{peer}"] = statistics.median(each)
    ratios["llmos_over_bare_engine"] = statistics.median(
        mine["tokens_per_s"] / bare["tokens_per_s"] for mine, bare in zip(runs["llmos"], runs["bare_engine"],
                                                                         strict=True))
    return ratios


def kernel_time_share(runs: dict[str, list[Any]]) -> float:
    """The kernel's own time, measured directly: the share of llmos's run in which the engine
    was not stepping, less the same share of the bare engine's loop in the same round (the
    median over the rounds). Unlike the ratio of the two runs' walls it leaves out how fast
    the engine happened to step in each (tens of percent apart from run to run on a shared
    machine); it also leaves out any slowing of the steps themselves by the kernel, which
    the step medians beside it show."""
    return statistics.median(mine["outside_share"] - bare["outside_share"]
                             for mine, bare in zip(runs["llmos"], runs["bare_engine"], strict=True))


def hf_generate_batch_rows(baseline: llmos.Model, ns: list[int], throughput_rows: dict[str, Any]) -> None:
    """(c) for every N, into the table's rows: run last (see `throughput`)."""
    hf, tok = baseline.driver.hf_model, baseline.driver.hf_tokenizer
    for n in ns:
        row = throughput_rows[str(n)]
        row["hf_generate_batch"] = compute.call(hf_generate_batch, hf, tok, questions(n))
        result = row["hf_generate_batch"]
        print(f"transformers generate_batch, N = {n}: "
              + (result if isinstance(result, str) else f"{result['tokens_per_s']:.1f} tok/s"))


def dtype_name(model: llmos.Model) -> str:
    return str(model.driver.model.dtype).removeprefix("torch.")


def report_throughput(n: int, row: dict[str, Any]) -> None:
    base = row["sequential_generate"]["tokens_per_s"]
    cpp = row["llama_cpp_sequential"]
    print(f"\nN = {n}")
    print(f"  {'method':24} {'tok/s':>8} {'x seq':>7} {'x l.cpp':>8} {'ttft p50':>9} {'ttft p95':>9} {'lat p50':>8}")
    for name, r in row.items():
        if name in ("paired_ratios", "kernel_time_share"):
            continue
        if isinstance(r, str):
            print(f"  {name:24} {r}")
            continue
        vs_cpp = f"{r['tokens_per_s'] / cpp['tokens_per_s']:.2f}" if isinstance(cpp, dict) else "-"
        ttft = (f"{r['ttft_p50_s']:9.2f} {r['ttft_p95_s']:9.2f} {r['latency_p50_s']:8.2f}" if "ttft_p50_s" in r
                else f"{'-':>9} {'-':>9} {'-':>8}")
        print(f"  {name:24} {r['tokens_per_s']:8.1f} {r['tokens_per_s'] / base:7.2f} {vs_cpp:>8} {ttft}")
    same = next((r for name, r in row.items() if name.startswith("sequential_generate_")), None)
    if same is not None:
        print(f"  llmos vs sequential generate in its own dtype: x{row['llmos']['tokens_per_s'] / same['tokens_per_s']:.2f}")
    print(f"  kernel time between engine steps: {row['llmos']['gap_ms_median']:.2f} ms median, "
          f"{row['llmos']['gap_share'] * 100:.1f}% of the run; engine step {row['llmos']['step_ms_median']:.1f} ms "
          f"under the kernel, {row['bare_engine']['step_ms_median']:.1f} ms bare (medians)")
    ratios, pairs = row["paired_ratios"], len(row["llmos"]["tokens_per_s_runs"])
    print("  llmos over its peers, the median of the rounds' ratios: "
          + ", ".join(f"{peer.removeprefix('llmos_over_')} x{ratio:.2f}" for peer, ratio in ratios.items()
                      if peer != "llmos_over_bare_engine"))
    print(f"  kernel overhead (bare engine over llmos, the median of {pairs} pairs' ratios): "
          f"{(1 / ratios['llmos_over_bare_engine'] - 1) * 100:+.1f}%")
    print(f"  kernel time outside the engine's steps (less the bare loop's, median of {pairs} pairs): "
          f"{row['kernel_time_share'] * 100:.1f}% of the run")


def staggered(model: llmos.Model) -> dict[str, Any]:
    qs = questions(16)
    result = anyio.run(lambda: llmos_agents(model, qs, arrivals=[i * 0.5 for i in range(16)]))
    result.pop("ttfts")
    print(f"\nstaggered arrivals (16 requests, 2/s): {result['tokens_per_s']:.1f} tok/s, ttft p50 "
          f"{result['ttft_p50_s']:.2f} s p95 {result['ttft_p95_s']:.2f} s, latency p50 {result['latency_p50_s']:.2f} s")
    return result


def shared_prefix(model: llmos.Model) -> dict[str, Any]:
    system = " ".join(["You are an agent of the llmos research team. Follow the team's rules: be brief, "
                       "cite what you know, say when you do not know, and never invent facts."] * 20)
    n_tokens = len(model.driver.tokenizer.encode(system))
    qs = questions(16)
    runs = {}
    for label, caching in (("with_prefix_cache", True), ("without_prefix_cache", False)):
        driver = compute.call(TransformersDriver, "smollm2", model.driver.model, model.driver.tokenizer,
                              config=EngineConfig(prefix_caching=caching))  # packs weights: torch work
        runs[label] = anyio.run(lambda d=driver: llmos_agents(llmos.Model(d), qs, system=system, max_tokens=32))
        runs[label].pop("ttfts")
    speedup = runs["without_prefix_cache"]["wall_s"] / runs["with_prefix_cache"]["wall_s"]
    print(f"\nshared {n_tokens}-token system prompt, 16 agents: {runs['with_prefix_cache']['wall_s']:.1f} s with "
          f"prefix caching, {runs['without_prefix_cache']['wall_s']:.1f} s without (x{speedup:.2f})")
    return {"system_prompt_tokens": n_tokens, **runs, "speedup": speedup}


def short_behind_long(model: llmos.Model, rounds: int = 3) -> dict[str, Any]:
    """16 long requests fill the batch (max_batch=16); a short one arrives 1 s later. The long
    ones decode all their 256 tokens (end-of-sequence ignored): one that stopped early would
    free a slot, and FIFO's wait would measure when the first answer happens to end. Rounds
    alternate the policies; the medians are kept (the wait depends on where 1 s falls in a
    quantum, so one round says little)."""
    qs = questions(16) + ["What is the capital of France?"]
    budgets = [256] * 16 + [16]
    runs: dict[str, list[dict[str, float]]] = {"fifo": [], "rr": []}
    engine = model.driver.engine
    eos_ids, engine.eos_ids = engine.eos_ids, frozenset()
    try:
        for _ in range(rounds):
            for policy, kept in runs.items():
                r = anyio.run(lambda p=policy: llmos_agents(model, qs, policy=p, arrivals=[0.0] * 16 + [1.0],
                                                            max_tokens=budgets, quantum=16, max_batch=16))
                kept.append({"short_ttft_s": r["ttfts"][-1], "long_ttft_p50_s": statistics.median(r["ttfts"][:16]),
                             "wall_s": r["wall_s"]})
    finally:
        engine.eos_ids = eos_ids
    out: dict[str, Any] = {policy: {key: statistics.median(run[key] for run in kept) for key in kept[0]}
                           for policy, kept in runs.items()}
    out["short_ttft_s_by_round"] = {policy: [round(run["short_ttft_s"], 3) for run in kept] for policy, kept in runs.items()}
    out["ttft_improvement"] = out["fifo"]["short_ttft_s"] / out["rr"]["short_ttft_s"]
    print(f"\nshort request behind 16 long ones: time to first token {out['fifo']['short_ttft_s']:.2f} s under FIFO, "
          f"{out['rr']['short_ttft_s']:.2f} s under round-robin (x{out['ttft_improvement']:.1f}; medians of {rounds}: "
          f"{out['short_ttft_s_by_round']})")
    return out


def constrained_vs_free(model: llmos.Model, n: int = 16) -> dict[str, Any]:
    """The grammar's cost per generated token: the same batch decoded free and under a JSON schema."""
    schema = {"type": "object", "properties": {"topic": {"type": "string"}, "facts": {"type": "array",
              "items": {"type": "string"}}}, "required": ["topic", "facts"], "additionalProperties": False}
    runs = {}
    for label, extra in (("free", {}), ("json_schema", {"json_schema": schema})):
        jobs = [GenerationJob(id=i, pid=1, sampling=SamplingParams(max_tokens=NEW_TOKENS, **extra),
                              messages=(ChatMessage(role="user", content=q),)) for i, q in enumerate(questions(n))]
        for job in jobs:
            model.driver.prepare(job)
        wall = compute.call(step_until_done, model.driver, jobs)
        tokens = sum(len(j.token_ids) for j in jobs)
        runs[label] = {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "ms_per_token": wall / tokens * 1e3}
    cost = runs["json_schema"]["ms_per_token"] - runs["free"]["ms_per_token"]
    print(f"\ngrammar cost at batch {n}: free {runs['free']['tokens_per_s']:.1f} tok/s, constrained "
          f"{runs['json_schema']['tokens_per_s']:.1f} tok/s ({cost:+.2f} ms per generated token)")
    return {"batch": n, **runs, "grammar_ms_per_token": cost}


def step_until_done(driver: TransformersDriver, jobs: list[GenerationJob]) -> float:
    """Step the engine directly until every job is finished; the seconds it took."""
    started = time.perf_counter()
    while any(not j.finished for j in jobs):
        driver.engine.step([j for j in jobs if not j.finished], lambda batch: None)
    return time.perf_counter() - started


EXTRA_RUNS: dict[str, Callable[[llmos.Model], dict[str, Any]]] = {
    "staggered": staggered, "shared_prefix": shared_prefix, "short_behind_long": short_behind_long,
    "constrained_vs_free": constrained_vs_free,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 4 only, and no extra runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequential", type=int, default=4, help="requests the one-at-a-time baselines run")
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 4, 16, 64], help="agent counts to measure")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds per N of llama.cpp (one by one and batched), llmos and the bare engine")
    parser.add_argument("--pairs", type=int, default=3,
                        help="runs of llmos and of the bare engine in each round, taking turns (kernel overhead)")
    parser.add_argument("--runs", nargs="*", default=list(EXTRA_RUNS), choices=list(EXTRA_RUNS),
                        help="the runs after the throughput table")
    parser.add_argument("--runs-only", action="store_true", help="no throughput table: only --runs, saved to "
                        f"{RUNS_RESULTS.name} (the table's file is left as it is)")
    args = parser.parse_args()
    if args.repeat < 1 or args.pairs < 1:
        parser.error("--repeat and --pairs take 1 or more")
    use_model_cache("llmos-bench-generate-")
    at_start = machine(args.threads)
    model = llmos.load_model("smollm2")
    baseline = llmos.load_model("smollm2", dtype="float32")
    compute.call(torch.set_num_threads, args.threads)  # OpenMP's thread count is per calling thread; loading resets it
    ns = [1, 4] if args.quick else args.ns
    quantization = model.driver.engine.runner.quantization.describe()  # measured at load: it varies by machine
    print(f"llmos: {dtype_name(model)}, quantization {quantization}")
    results: dict[str, Any] = {"machine": at_start, "threads": args.threads, "dtype": dtype_name(model),
                               "quantization": quantization, "baseline_dtype": dtype_name(baseline),
                               "new_tokens": NEW_TOKENS}
    if not args.runs_only:
        results.update(repeat=args.repeat, pairs=args.pairs, throughput=throughput(model, baseline, ns, args))
    for name in [] if args.quick else args.runs:
        results[name] = EXTRA_RUNS[name](model)
    saved = RUNS_RESULTS if args.runs_only else RESULTS
    if not args.runs_only:
        hf_generate_batch_rows(baseline, ns, results["throughput"])
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nsaved {saved}")
    if not args.runs_only:
        charts.redraw("generate")


if __name__ == "__main__":
    main()
