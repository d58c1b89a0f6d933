"""A prompt found in the prefix cache: is its first token's distribution the one it had when
computed whole, and what does its tail cost? On the real SmolLM2, in this machine's default
dtype and each --quant, for tails of 1, 3, 9 and 20 tokens after --cached cached tokens: the
first-token logits computed whole (cold cache) and then found cached, their largest
difference (0 where bitwise), and the time to the first token of each, taking turns --rounds
times (medians). The tail runs with the weights of the prompt's own pass (`Batch.weight_rows`).
--sweep adds how often the logits are bitwise over many cached lengths and tails (README.md's
text from varied places, no timing), among them tails in the middle of sdpa's 32-query blocks.

    LLMOS_HOME=/tmp/benchhome .venv/bin/python bench/prefix_tail.py [--quant none auto] [--rounds 15] [--sweep]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from common import machine, use_model_cache

RESULTS = Path(__file__).parent / "results" / "prefix_tail.json"
TAILS = (1, 3, 9, 20)
SWEEP_CACHED = (32, 48, 112, 176, 256, 336, 512, 528, 592, 784, 1024)
SWEEP_TAILS = (1, 2, 3, 7, 15, 16)
STORY = "The keeper of the lighthouse watched the storm roll in from the sea, and wrote it down. "


def timed_first_logits(engine: Any, prompt: list[int], cold: bool) -> tuple[torch.Tensor, float]:
    """The prompt's first-token logits and the seconds they took, from a cold or a warm cache."""
    from llmos.testing import first_logits

    if cold:
        engine.blocks.clear_cache()
    began = time.perf_counter()
    logits = first_logits(engine, prompt)
    return logits, time.perf_counter() - began


def measure_tail(engine: Any, prompt: list[int], rounds: int) -> dict[str, Any]:
    whole, _ = timed_first_logits(engine, prompt, cold=True)
    cached, _ = timed_first_logits(engine, prompt, cold=False)
    times: dict[str, list[float]] = {"whole": [], "cached": []}
    for _ in range(rounds):  # in turns: the host's noise falls on both
        times["whole"].append(timed_first_logits(engine, prompt, cold=True)[1])
        times["cached"].append(timed_first_logits(engine, prompt, cold=False)[1])
    return {"bitwise": bool(torch.equal(whole, cached)), "max_abs_diff": float((whole - cached).abs().max()),
            "same_first_token": int(whole.argmax()) == int(cached.argmax()),
            **{f"{way}_ms": statistics.median(ts) * 1000 for way, ts in times.items()}}


def measure(quant: str, cached: int, rounds: int, sweeping: bool) -> dict[str, Any]:
    import llmos

    model = llmos.load_model("smollm2", quant=quant)
    engine, tokenizer = model.driver.engine, model.driver.tokenizer
    story = tokenizer.encode(STORY * (cached // 16 + 4))
    out: dict[str, Any] = {"dtype": str(engine.runner.model.dtype).removeprefix("torch."),
                           "quantization": engine.runner.quantization.describe(), "tails": {}}
    for tail in TAILS:
        row = out["tails"][tail] = measure_tail(engine, story[:cached + tail], rounds)
        same = "bitwise" if row["bitwise"] else f"max diff {row['max_abs_diff']:.2e}"
        print(f"  {quant}: tail {tail:2}: {same}, "
              f"first token {row['whole_ms']:.1f} ms whole, {row['cached_ms']:.1f} ms cached")
    if sweeping:
        out["sweep"] = sweep(engine, tokenizer)
    return out


def sweep(engine: Any, tokenizer: Any) -> dict[str, Any]:
    """Whole against cached first-token logits over SWEEP_CACHED x SWEEP_TAILS prompts."""
    text = tokenizer.encode((Path(__file__).parents[1] / "README.md").read_text())
    differing = []
    for i, (cached, tail) in enumerate((c, t) for c in SWEEP_CACHED for t in SWEEP_TAILS):
        start = (i * 997) % (len(text) - cached - tail)  # spread over the text, the same places each run
        prompt = text[start:start + cached + tail]
        whole, _ = timed_first_logits(engine, prompt, cold=True)
        found, _ = timed_first_logits(engine, prompt, cold=False)
        if not torch.equal(whole, found):
            differing.append({"cached": cached, "tail": tail, "max_abs_diff": float((whole - found).abs().max()),
                              "same_first_token": int(whole.argmax()) == int(found.argmax())})
    cases = len(SWEEP_CACHED) * len(SWEEP_TAILS)
    print(f"  sweep: {cases - len(differing)} of {cases} bitwise; differing: "
          + (", ".join(f"{d['cached']}+{d['tail']} by {d['max_abs_diff']:.2e}" for d in differing) or "none"))
    return {"cases": cases, "bitwise": cases - len(differing), "differing": differing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quant", nargs="+", default=["none", "auto"], choices=["none", "int8", "int4", "auto"])
    parser.add_argument("--cached", type=int, default=512, help="prompt tokens found cached (a multiple of 16)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep", action="store_true", help="count bitwise cases over many cached lengths and tails")
    parser.add_argument("--save", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.cached % 16 or not 16 <= args.cached <= 1536:
        parser.error("--cached is a multiple of 16, from 16 to 1536")
    use_model_cache()
    torch.set_num_threads(args.threads)
    out = {"machine": machine(args.threads), "cached_tokens": args.cached, "rounds": args.rounds, "quant": {}}
    for quant in args.quant:
        out["quant"][quant] = measure(quant, args.cached, args.rounds, args.sweep)
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(out, indent=2) + "\n")
    print(f"saved {args.save}")


if __name__ == "__main__":
    main()
