"""KV memory by budget: what one agent costs, how many agents with 2k-token contexts fit a
budget, and a real run of more such agents than fit, admitted by the kernel's block manager.

On the real SmolLM2-135M-Instruct. The figures per token and per agent follow from the
model's shape and dtype (K and V of every layer); the run boots a kernel on an engine whose
KV budget is --budget-mb, spawns --agents agents each asking about a ~2,000-token text, and
records how many ran at once (the scheduler admits by free blocks and queues the rest),
the peak of blocks held, the resident memory the run added, and that every agent finished.

    .venv/bin/python bench/kv_budget.py [--threads 2] [--budget-mb 256] [--agents 8]
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import anyio
import torch

import llmos
from llmos.drivers import compute
from llmos.drivers.engine import EngineConfig
from llmos.drivers.kv_cache import KVPool
from llmos.drivers.transformers_driver import TransformersDriver
from llmos.kernel.blocks import BLOCK, blocks_for
from llmos.kernel.model import ChatMessage

from common import machine, use_model_cache

RESULTS = Path(__file__).parent / "results" / "kv_budget.json"
CONTEXT = 2048
BUDGETS_GIB = (1, 2, 4, 8)


def per_agent(model: Any, dtype: torch.dtype) -> dict[str, Any]:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    block = KVPool.block_bytes(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, dtype)
    agent = blocks_for(CONTEXT) * block
    return {"dtype": str(dtype), "bytes_per_token": block // BLOCK, "bytes_per_block": block,
            "mib_per_2k_agent": agent / 2**20,
            "agents_with_2k_context": {f"{gib} GiB": (gib * 2**30 // block - 1) // blocks_for(CONTEXT)
                                       for gib in BUDGETS_GIB}}


def long_question(i: int) -> str:
    text = " ".join(f"Fact {j}: the lighthouse keeper number {i} counted {j * 7 % 97} ships." for j in range(150))
    return f"{text}\nHow many facts are listed above?"


async def run_agents(model: llmos.Model, n: int, max_tokens: int) -> dict[str, Any]:
    engine = model.driver.engine
    peak = {"sequences": 0, "held": 0}

    async def agent(sys: llmos.Sys, question: str) -> int:
        reply = await sys.chat(question, max_tokens=max_tokens)
        return reply.completion_tokens

    async def watch() -> None:
        while True:
            stats = engine.statistics()
            peak["sequences"] = max(peak["sequences"], stats["sequences"])
            peak["held"] = max(peak["held"], stats["kv_blocks_held"])
            await anyio.sleep(0.05)

    started = time.perf_counter()
    async with llmos.boot(model, policy="fifo") as kernel, anyio.create_task_group() as tg:
        tg.start_soon(watch)
        pids = [(await kernel.spawn(agent, long_question(i))).pid for i in range(n)]
        statuses = [await kernel.wait(pid) for pid in pids]
        tg.cancel_scope.cancel()
    prompt_tokens = len(model.driver.tokenize([ChatMessage(role="user", content=long_question(0))]))
    return {"agents": n, "prompt_tokens_each": prompt_tokens, "finished": sum(s.result is not None for s in statuses),
            "peak_running_at_once": peak["sequences"], "peak_blocks_held": peak["held"],
            "kv_blocks": engine.blocks.total - 1, "preemptions": kernel.scheduler.preemptions,
            "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-mb", type=int, default=256)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    use_model_cache("llmos-bench-kv-")
    compute.call(torch.set_num_threads, args.threads)
    loaded = llmos.load_model("smollm2")
    hf = loaded.driver.model
    results: dict[str, Any] = {"machine": machine(threads=args.threads),
                               "per_agent": [per_agent(hf, torch.float32), per_agent(hf, torch.bfloat16)]}
    for row in results["per_agent"]:
        print(f"{row['dtype']}: {row['bytes_per_token']} bytes/token, {row['mib_per_2k_agent']:.1f} MiB per 2k-token "
              f"agent; agents with 2k contexts: {row['agents_with_2k_context']}")
    # What the engine keeps here: bfloat16 under a float32 model on the quantized path (drivers/llama.py kv_dtype).
    results["engine_kv_dtype"] = str(loaded.driver.engine.cache.k.dtype)
    print(f"the engine keeps K/V in {results['engine_kv_dtype']} for {loaded.driver.model.dtype} weights here")
    driver = compute.call(TransformersDriver, "smollm2", hf, loaded.driver.tokenizer,
                          config=EngineConfig(kv_cache_mb=args.budget_mb))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = anyio.run(run_agents, llmos.Model(driver), args.agents, args.max_tokens)
    run["budget_mb"] = args.budget_mb
    run["max_rss_growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    results["run"] = run
    print(f"{args.agents} agents of {run['prompt_tokens_each']} prompt tokens on a {args.budget_mb} MiB KV budget "
          f"({run['kv_blocks']} blocks): {run['finished']} finished, at most {run['peak_running_at_once']} at once, "
          f"peak {run['peak_blocks_held']} blocks held, {run['preemptions']} preemptions, {run['wall_s']:.1f} s, "
          f"max RSS +{run['max_rss_growth_mib']:.0f} MiB")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
