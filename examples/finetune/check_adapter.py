"""Ask the held-out questions of qa.jsonl to the base model and to the base with a fine-tuned
adapter, loaded with peft directly (greedy decoding, the model's chat template), and score the
replies as `llmos eval --qa` does (the answer's words appear in the reply).

    python examples/finetune/check_adapter.py facts-demo            # the adapter of a fine-tuned model
    python examples/finetune/check_adapter.py facts-demo --qa other.jsonl --max-tokens 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmos import library
from llmos.eval_data import contains_answer, read_qa

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model made by `llmos finetune` (a derived model with an adapter)")
    parser.add_argument("--qa", type=Path, default=HERE / "qa.jsonl")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    name, entry = library.read_library().find(args.model) or (None, None)
    if not isinstance(entry, library.DerivedEntry) or entry.adapter is None:
        raise SystemExit(f"{args.model!r} is not a fine-tuned model of the library (see `llmos models list`)")
    folder = library.local_folder(entry.base)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    items = read_qa(args.qa)
    before = [reply(base, tokenizer, item.question, args.max_tokens) for item in items]
    tuned = PeftModel.from_pretrained(base, entry.adapter).eval()
    after = [reply(tuned, tokenizer, item.question, args.max_tokens) for item in items]
    for item, old, new in zip(items, before, after):
        print(f"Q: {item.question}  (answer: {item.answers[0]})\n  {entry.base}: {old}\n  {name}: {new}\n")
    for label, replies in ((entry.base, before), (name, after)):
        hits = sum(contains_answer(text, item.answers) for text, item in zip(replies, items))
        print(f"{label}: {hits}/{len(items)} replies contain the answer")


@torch.inference_mode()
def reply(model: torch.nn.Module, tokenizer: AutoTokenizer, question: str, max_tokens: int) -> str:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


if __name__ == "__main__":
    main()
