"""Does the engine keep the model's quality? float32 against bfloat16, and int8 and int4
weights (drivers/quant.py) against none.

On the real SmolLM2-135M-Instruct:
  - perplexity of README.md's first 2,048 tokens, model in float32 and in bfloat16;
  - greedy replies to 16 questions through the llmos engine in each dtype, against
    `model.generate` in float32 and in the same dtype (and model.generate's own replies
    in each dtype against float32's): how many replies are identical, and the mean share
    of each reply that agrees before the first differing token;
  - in the machine's default dtype, int8 and int4: perplexity with the weights each keeps
    (gate: within 5% of the unquantized model's), and the quantized engine's greedy replies
    against the unquantized engine's.

    .venv/bin/python bench/quality.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

import llmos
from llmos.drivers import compute, quant
from llmos.drivers.transformers_driver import cpu_dtype
from llmos.kernel.model import ChatMessage, GenerationJob, SamplingParams

from common import use_model_cache

RESULTS = Path(__file__).parent / "results" / "quality.json"
TEXT = Path(__file__).parent.parent / "README.md"
QUESTIONS = ["What is the capital of France?", "Name three colors.", "What is 2+2?", "Write one sentence about the sea.",
             "Explain photosynthesis briefly.", "Give me a haiku about autumn.", "Who wrote Hamlet?",
             "List two prime numbers.", "How do bees make honey?", "Translate 'good morning' to French.",
             "Why is the sky blue?", "What is a noun?", "Suggest a name for a cat.", "How many legs does a spider have?",
             "What does a compiler do?", "Describe a rainbow in one sentence."]
NEW_TOKENS = 48
PERPLEXITY_GATE = 0.05  # a quantization may raise perplexity by at most this share


def perplexity(model: llmos.Model, tokens: int = 2048) -> float:
    hf, tok = model.driver.hf_model, model.driver.hf_tokenizer
    ids = tok(TEXT.read_text(), return_tensors="pt").input_ids[:, :tokens]
    with torch.inference_mode():
        return float(torch.exp(hf(ids, labels=ids).loss.float()))


def engine_replies(model: llmos.Model) -> list[list[int]]:
    replies = []
    for i, question in enumerate(QUESTIONS):
        job = GenerationJob(id=i, pid=1, sampling=SamplingParams(max_tokens=NEW_TOKENS),
                            messages=(ChatMessage(role="user", content=question),))
        model.driver.prepare(job)
        while not job.finished:
            model.driver.engine.step([job], lambda pieces: None)
        model.driver.engine.step([], lambda pieces: None)
        replies.append(job.token_ids)
    return replies


def reference_replies(model: llmos.Model) -> list[list[int]]:
    hf, tok, eos = model.driver.hf_model, model.driver.hf_tokenizer, model.driver.eos_ids
    replies = []
    for question in QUESTIONS:
        ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                                    tokenize=True, return_dict=True)["input_ids"]])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False)
        replies.append([t for t in out[0, ids.shape[1]:].tolist() if t not in eos])
    return replies


def agreement(replies: list[list[int]], reference: list[list[int]]) -> dict[str, float]:
    def shared_share(a: list[int], b: list[int]) -> float:
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return n / max(len(a), len(b), 1)

    return {"identical": sum(a == b for a, b in zip(replies, reference, strict=True)),
            "of": len(reference),
            "mean_agreeing_share": sum(map(shared_share, replies, reference)) / len(reference)}


def quantized_perplexity(model: llmos.Model, kind: str, tokens: int = 2048) -> float:
    """Perplexity with the weights `kind` keeps in the engine (drivers/quant.py: the decoder's
    projections in `kind`, the output projection in int8 when they are int4), put back after."""
    hf, tok = model.driver.hf_model, model.driver.hf_tokenizer
    ids = tok(TEXT.read_text(), return_tensors="pt").input_ids[:, :tokens]
    linears = [m for layer in hf.model.layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    originals = [m.weight.data for m in linears]
    head_kind = "int8" if kind == "int4" else kind
    try:
        for m in linears:
            m.weight.data = quant.dequantized(m.weight.data, kind)
        with torch.inference_mode():
            hidden = hf.model(ids).last_hidden_state  # the tied embeddings stay as they are
            logits = (hidden @ quant.dequantized(hf.lm_head.weight.data, head_kind).T).float()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    finally:
        for m, weight in zip(linears, originals):
            m.weight.data = weight
    return float(torch.exp(loss))


def engine_perplexity(model: llmos.Model, tokens: int = 1024, head: int = 16) -> float:
    """Perplexity of README.md's first `tokens` tokens as the engine scores them (the text
    after the first `head` tokens as one option): its passes over that many rows run the dense
    weights, so against the unquantized engine this measures the K/V each engine keeps
    (bfloat16 under float32 weights on the quantized path: drivers/llama.py `kv_dtype`)."""
    tok = model.driver.hf_tokenizer
    ids = tok(TEXT.read_text()).input_ids[:tokens]
    job = GenerationJob(id=0, pid=1, sampling=SamplingParams(max_tokens=1), prompt_ids=ids[:head],
                        options=(tok.decode(ids[head:]),))
    model.driver.prepare(job)
    while not job.finished:
        model.driver.engine.step([job], lambda pieces: None)
    model.driver.engine.step([], lambda pieces: None)
    logprobs = job.option_logprobs[0]
    return float(torch.exp(-torch.tensor(logprobs).mean()))


def quantization(unquantized: llmos.Model, dtype: str, replies: list[list[int]]) -> dict[str, Any]:
    """int8 and int4 against the unquantized model in `dtype`: perplexity (the gate: within
    PERPLEXITY_GATE of it) and the engine's greedy replies against the unquantized engine's."""
    base = compute.call(quantized_perplexity, unquantized, "none")
    scored = compute.call(engine_perplexity, unquantized)
    found: dict[str, Any] = {"dtype": dtype, "perplexity_unquantized": base, "gate": PERPLEXITY_GATE,
                             "engine_scoring_perplexity_unquantized": scored,
                             "kv_dtype_unquantized": str(unquantized.driver.engine.cache.k.dtype)}
    for kind in ("int8", "int4"):
        if not quant.available(kind):
            found[kind] = {"available": False}
            continue
        model = llmos.load_model("smollm2", dtype=dtype, quant=kind)  # type: ignore[arg-type]
        ppl = compute.call(quantized_perplexity, unquantized, kind)
        found[kind] = {"perplexity": ppl, "perplexity_change": ppl / base - 1,
                       "passes_gate": ppl <= base * (1 + PERPLEXITY_GATE),
                       "engine_vs_unquantized_engine": agreement(compute.call(engine_replies, model), replies),
                       "engine_scoring_perplexity": compute.call(engine_perplexity, model),
                       "kv_dtype": str(model.driver.engine.cache.k.dtype)}
        r = found[kind]
        print(f"{kind:9} engine scoring perplexity {r['engine_scoring_perplexity']:.3f} with K/V in {r['kv_dtype']} "
              f"(unquantized engine: {scored:.3f}, K/V in {found['kv_dtype_unquantized']})")
        print(f"{kind:9} perplexity {ppl:.2f} ({r['perplexity_change']:+.1%} of {base:.2f}, gate "
              f"{'passed' if r['passes_gate'] else 'FAILED'}); engine replies identical to the unquantized "
              f"engine's: {r['engine_vs_unquantized_engine']['identical']}/{len(QUESTIONS)} (agreeing share "
              f"{r['engine_vs_unquantized_engine']['mean_agreeing_share']:.2f})")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    use_model_cache("llmos-bench-quality-")  # never ~/.llmos
    compute.call(torch.set_num_threads, args.threads)
    with quant.requested_quantization("none"):  # the dtypes alone first
        models = {dtype: llmos.load_model("smollm2", dtype=dtype) for dtype in ("float32", "bfloat16")}
    reference = compute.call(reference_replies, models["float32"])
    results: dict[str, Any] = {"threads": args.threads, "text": TEXT.name, "questions": len(QUESTIONS)}
    for dtype, model in models.items():
        own = compute.call(reference_replies, model) if dtype != "float32" else reference
        replies = compute.call(engine_replies, model)
        results[dtype] = {"perplexity": compute.call(perplexity, model),
                          "engine_vs_generate_float32": agreement(replies, reference),
                          "engine_vs_generate_same_dtype": agreement(replies, own),
                          "generate_vs_generate_float32": agreement(own, reference)}
        r = results[dtype]
        print(f"{dtype:9} perplexity {r['perplexity']:.2f}; engine replies identical to model.generate: "
              f"float32 {r['engine_vs_generate_float32']['identical']}/{len(QUESTIONS)} "
              f"(agreeing share {r['engine_vs_generate_float32']['mean_agreeing_share']:.2f}), "
              f"{dtype} {r['engine_vs_generate_same_dtype']['identical']}/{len(QUESTIONS)} "
              f"(agreeing share {r['engine_vs_generate_same_dtype']['mean_agreeing_share']:.2f}); model.generate "
              f"itself vs float32: {r['generate_vs_generate_float32']['identical']}/{len(QUESTIONS)}")
        results[dtype]["engine_replies"] = replies
    default = str(cpu_dtype()).removeprefix("torch.")
    results["quantization"] = quantization(models[default], default, results[default].pop("engine_replies"))
    for dtype in models:
        results[dtype].pop("engine_replies", None)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
