"""The llama.cpp peer that batches: every live sequence in one `llama_decode` per step, as
`llama-server --parallel N` does, through llama-cpp-python's low-level API, greedy, on the
same GGUF and the same prompt token ids as llmos (SmolLM2's chat template, by its tokenizer).

    measured = batched(prompt_ids, threads=2, new_tokens=64)   # [(first-token s, s, tokens)]
    row = summary(model, questions, threads=2, new_tokens=64)   # the benchmarks' row, or a reason
"""
from __future__ import annotations

import ctypes
import time
from typing import Any

import numpy as np

PREFILL_CHUNK = 512  # prompt tokens per llama_decode while prefilling (n_batch)


def summary(model: Any, questions: list[str], threads: int, new_tokens: int,
            gpu_layers: int = 0) -> dict[str, float] | str:
    """The benchmarks' row for `questions` asked together of llama.cpp, batched, on the very
    prompt token ids llmos's driver makes of the same chats (`model` is an llmos.Model); a
    reason instead where llama-cpp-python is not installed."""
    from common import summarize
    from llmos.kernel.model import ChatMessage

    import llama_isolated

    prompts = [model.driver.tokenize((ChatMessage(role="user", content=q),)) for q in questions]
    try:  # in a process of its own: beside llmos's engine llama.cpp runs at under half its speed
        measured = llama_isolated.batched(prompts, threads, new_tokens, gpu_layers)
    except ImportError:
        return "skipped: llama-cpp-python is not installed (pip install llama-cpp-python to compare)"
    return summarize([first for first, _, _ in measured], [end for _, end, _ in measured],
                     sum(count for _, _, count in measured), max(end for _, end, _ in measured))


def _load(**options: Any) -> Any:
    """llama-cpp-python's Llama on SmolLM2's GGUF, without the extra buffer types where they
    crash this build (bench/common.py)."""
    from llama_cpp import Llama

    from common import llama_cpp_extra_buffers_crash, llama_cpp_without_extra_buffers
    from llmos.drivers.smollm2 import SOURCE

    if llama_cpp_extra_buffers_crash():
        llama_cpp_without_extra_buffers()
    return Llama(model_path=str(SOURCE.path()), verbose=False, **options)


def sequential(questions: list[str], threads: int, new_tokens: int) -> list[tuple[float, float, int]]:
    """llama.cpp's own chat completions, one request at a time, streamed: per request (time
    to its first token, time to its last, tokens)."""
    llm = _load(n_ctx=2048, n_threads=threads, n_batch=512)
    measured = []
    for q in questions:
        started, first, tokens = time.perf_counter(), None, 0
        for chunk in llm.create_chat_completion(messages=[{"role": "user", "content": q}], max_tokens=new_tokens,
                                                temperature=0.0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                tokens += 1  # llama-cpp-python streams one chunk per token
        measured.append(((first or started) - started, time.perf_counter() - started, tokens))
    return measured


def batched(prompts: list[list[int]], threads: int, new_tokens: int,
            gpu_layers: int = 0) -> list[tuple[float, float, int]]:
    """Greedy replies to `prompts`, all in one context: per prompt (time to its first new
    token, time to its last, new tokens), every time from the start. `gpu_layers`: layers
    llama.cpp offloads to a GPU (-1: all), where its build has one."""
    from llama_cpp import llama_cpp as lib

    llm = _load(n_ctx=256, n_threads=threads, n_gpu_layers=gpu_layers)  # the weights; contexts are made below
    model = llm._model.model
    vocab = lib.llama_model_get_vocab(model)
    n_vocab = lib.llama_vocab_n_tokens(vocab)
    params = lib.llama_context_default_params()
    params.n_ctx = len(prompts) * (max(map(len, prompts)) + new_tokens + 8)  # each sequence gets n_ctx / n_seq_max
    params.n_batch = params.n_ubatch = max(PREFILL_CHUNK, len(prompts))
    params.n_seq_max = len(prompts)
    params.n_threads = params.n_threads_batch = threads
    ctx = lib.llama_init_from_model(model, params)
    batch = lib.llama_batch_init(params.n_batch, 0, 1)
    try:
        return _run(lib, ctx, batch, vocab, n_vocab, prompts, new_tokens)
    finally:
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)
        llm.close()


def _run(lib: Any, ctx: Any, batch: Any, vocab: Any, n_vocab: int, prompts: list[list[int]],
         new_tokens: int) -> list[tuple[float, float, int]]:
    started = time.perf_counter()
    last = {}  # seq -> its next input token, from its prompt's last logits
    pending = [(seq, pos, token, pos == len(prompt) - 1)
               for seq, prompt in enumerate(prompts) for pos, token in enumerate(prompt)]
    for first in range(0, len(pending), PREFILL_CHUNK):  # the prompts, a chunk a decode
        chunk = pending[first:first + PREFILL_CHUNK]
        _decode(lib, ctx, batch, chunk)
        for index, (seq, _, _, wants) in enumerate(chunk):
            if wants:
                last[seq] = _argmax(lib, ctx, index, n_vocab)
    firsts = {seq: time.perf_counter() - started for seq in last}
    ends: dict[int, float] = {}
    counts = {seq: 1 for seq in last}
    positions = {seq: len(prompts[seq]) for seq in last}
    live = [seq for seq in last if not lib.llama_vocab_is_eog(vocab, last[seq])]
    for seq in set(last) - set(live):
        ends[seq] = firsts[seq]
    while live:  # one decode a step over every live sequence
        _decode(lib, ctx, batch, [(seq, positions[seq], last[seq], True) for seq in live])
        still = []
        for index, seq in enumerate(live):
            token = _argmax(lib, ctx, index, n_vocab)
            positions[seq] += 1
            if lib.llama_vocab_is_eog(vocab, token) or counts[seq] >= new_tokens:
                ends[seq] = time.perf_counter() - started
                continue
            counts[seq] += 1
            last[seq] = token
            still.append(seq)
        live = still
    return [(firsts[seq], ends[seq], counts[seq]) for seq in range(len(prompts))]


def _decode(lib: Any, ctx: Any, batch: Any, tokens: list[tuple[int, int, int, bool]]) -> None:
    """One llama_decode over (sequence, position, token, wants logits) entries."""
    for i, (seq, pos, token, wants) in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = 1 if wants else 0
    batch.n_tokens = len(tokens)
    if lib.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed (the context is too small?)")


def _argmax(lib: Any, ctx: Any, index: int, n_vocab: int) -> int:
    logits = lib.llama_get_logits_ith(ctx, index)
    return int(np.ctypeslib.as_array(ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)).argmax())
