"""The transformers driver: a Hugging Face causal LM served to many jobs at once.

`run` decodes a static batch: the jobs' prompts are left-padded into one tensor, prefilled
together, then every step decodes one token for every job still going. (The continuous-
batching engine, where jobs join and leave at token granularity, replaces this loop.)
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llmos.drivers.text import advance
from llmos.kernel.errors import ContextOverflow
from llmos.kernel.model import EmitFn, GenerationJob

log = logging.getLogger(__name__)


def pick_device_and_attention() -> tuple[str, str, torch.dtype]:
    """FlashAttention 2 on CUDA when flash-attn is installed, else PyTorch's sdpa."""
    if torch.cuda.is_available():
        if importlib.util.find_spec("flash_attn") is not None:
            return "cuda", "flash_attention_2", torch.bfloat16
        log.warning("CUDA is available but flash-attn is not installed; using sdpa")
        return "cuda", "sdpa", torch.bfloat16
    return "cpu", "sdpa", torch.float32


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass
class _Row:
    """A job's place in the running batch."""

    job: GenerationJob
    budget: int  # tokens it may still decode in this run
    streamed: int = 0  # characters of job.text already emitted
    generator: torch.Generator | None = None
    new_ids: list[int] = field(default_factory=list)


class TransformersDriver:
    def __init__(self, name: str, model: Any, tokenizer: Any, *, device: str = "cpu") -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos_ids = self._eos_ids()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)

    def _eos_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return frozenset(i for i in ids if i is not None)

    # -- prompts -----------------------------------------------------------------------------
    def prepare(self, job: GenerationJob) -> None:
        if job.messages is not None:
            messages = [m.model_dump() for m in job.messages]
            encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                         return_dict=True)
            job.prompt_ids = list(encoded["input_ids"])
        else:
            job.prompt_ids = self.tokenizer.encode(job.prompt or "", add_special_tokens=False)
        if len(job.prompt_ids) >= self.context_length:
            raise ContextOverflow(f"the prompt is {len(job.prompt_ids)} tokens; {self.name}'s context window "
                                  f"is {self.context_length}, leaving no room for a reply")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    # -- decoding --------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, jobs: Sequence[GenerationJob], max_steps: int, emit: EmitFn) -> None:
        rows = [self._row(job, max_steps) for job in jobs if not job.finished]
        rows = [row for row in rows if row.budget > 0 and not self._drop_cancelled(row)]
        if not rows:
            return
        input_ids, attention = self._left_pad([r.job.prompt_ids + r.job.token_ids for r in rows])
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = None
        live = list(range(len(rows)))
        while live:
            out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            next_ids = self._sample(out.logits[:, -1, :], rows)  # (B,)
            emit(self._commit(rows, live, next_ids))
            live = [i for i in live if not rows[i].job.finished and rows[i].budget > 0]
            input_ids = next_ids.unsqueeze(-1)  # (B, 1): finished rows decode on, unused
            attention = torch.cat([attention, attention.new_ones(len(rows), 1)], dim=-1)
            positions = positions[:, -1:] + 1

    def _row(self, job: GenerationJob, max_steps: int) -> _Row:
        room = self.context_length - len(job.prompt_ids) - len(job.token_ids)
        row = _Row(job=job, budget=min(max_steps, job.max_new_tokens, room), streamed=len(job.text))
        if job.sampling.temperature > 0:
            if job.driver_state is None:  # one RNG per job, kept across runs for reproducibility
                job.driver_state = torch.Generator(device=self.device)
                job.driver_state.manual_seed(job.sampling.seed if job.sampling.seed is not None
                                             else torch.seed())
            row.generator = job.driver_state
        if row.budget <= 0 and not job.finished:
            job.finish_reason = "length"
        return row

    @staticmethod
    def _drop_cancelled(row: _Row) -> bool:
        if row.job.cancelled:
            row.job.finish_reason = "cancelled"
        return row.job.cancelled

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """One next token per row: argmax for greedy rows, seeded top-p sampling for the rest."""
        chosen = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            if row.generator is not None and not row.job.finished:
                chosen[i] = sample_top_p(logits[i], row.job.sampling.temperature, row.job.sampling.top_p,
                                         row.generator)
        return chosen

    def _commit(self, rows: list[_Row], live: list[int], next_ids: torch.Tensor) -> list[tuple[GenerationJob, str]]:
        """Append each live row's new token, apply stop conditions, and collect text to stream."""
        pieces = []
        for i, token in zip(live, next_ids[live].tolist(), strict=True):
            row, job = rows[i], rows[i].job
            if job.cancelled:
                job.finish_reason = "cancelled"
                continue
            eos = token in self.eos_ids
            if not eos:
                job.token_ids.append(token)
                row.budget -= 1
            final = eos or len(job.token_ids) >= job.sampling.max_tokens or \
                len(job.prompt_ids) + len(job.token_ids) >= self.context_length
            piece, stopped = advance(job, self.tokenizer.decode(job.token_ids, skip_special_tokens=True),
                                     row.streamed, final)
            row.streamed += len(piece)
            pieces.append((job, piece))
            if eos or stopped:
                job.finish_reason = "stop"
            elif final:
                job.finish_reason = "length"
        return pieces


def sample_top_p(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Sample from softmax(logits / temperature) restricted to the smallest set of tokens
    whose probability reaches `top_p` (nucleus sampling)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # tokens past the nucleus
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())
