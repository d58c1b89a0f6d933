"""The llama.cpp peers measured in a process of their own, as a user runs llama.cpp.

In the process that has loaded llmos's engine, llama.cpp runs at well under half its speed
(measured here: SmolLM2 one request at a time, 72 tokens/s alone, 28-29 once a model was
loaded beside it, on either thread): PyTorch's and llama.cpp's thread pools compete for the
two cores. The benchmarks therefore hand their prompts to this script in a fresh Python,
which imports llama-cpp-python and no torch, and read the measurements back as JSON.

    measured = sequential(questions, threads=2, new_tokens=64)   # [(first-token s, s, tokens)]
    measured = batched(prompt_ids, threads=2, new_tokens=64)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

Measured = list[tuple[float, float, int]]  # per request: first-token time, duration, tokens


def sequential(questions: list[str], threads: int, new_tokens: int) -> Measured:
    """llama.cpp's own chat completion, one request at a time (its chat template)."""
    return _child("sequential", {"questions": questions}, threads, new_tokens)


def batched(prompts: list[list[int]], threads: int, new_tokens: int, gpu_layers: int = 0) -> Measured:
    """Every request in one llama_decode a step (llama_batch.batched) on these prompt ids."""
    return _child("batched", {"prompts": prompts, "gpu_layers": gpu_layers}, threads, new_tokens)


def _child(kind: str, payload: dict[str, Any], threads: int, new_tokens: int) -> Measured:
    """ImportError where llama-cpp-python is missing (the benchmarks then say it was skipped)."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), kind, str(threads), str(new_tokens)],
                          input=json.dumps(payload), capture_output=True, text=True, timeout=3600)
    if done.returncode == 3:
        raise ImportError("llama-cpp-python is not installed")
    if done.returncode != 0:
        raise RuntimeError(f"the llama.cpp measurement failed:\n{done.stderr[-2000:]}")
    return [tuple(row) for row in json.loads(done.stdout.strip().splitlines()[-1])]  # type: ignore[misc]


def _measure(kind: str, payload: dict[str, Any], threads: int, new_tokens: int) -> Measured:
    import llama_batch

    if kind == "batched":
        return llama_batch.batched(payload["prompts"], threads, new_tokens, payload.get("gpu_layers", 0))
    return llama_batch.sequential(payload["questions"], threads, new_tokens)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit(3)
    kind, threads, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(_measure(kind, json.loads(sys.stdin.read()), threads, tokens)))
    assert "torch" not in sys.modules, "the llama.cpp peer must run without torch in its process"
