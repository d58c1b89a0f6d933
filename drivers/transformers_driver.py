"""The transformers driver: a Hugging Face causal LM, tokenized with its own chat
template and served to many jobs at once by the continuous-batching engine."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from llmos.drivers.engine import Engine, EngineConfig
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


class TransformersDriver:
    def __init__(self, name: str, model: Any, tokenizer: Any, *, device: str = "cpu",
                 config: EngineConfig | None = None) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos_ids = self._eos_ids()
        config = config or EngineConfig()
        self.max_batch = config.max_batch
        self.engine = Engine(model, tokenizer, eos_ids=self.eos_ids, context_length=self.context_length,
                             config=config, dtype=model.dtype, device=device)

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
        self.engine.init_state(job)  # a bad json_schema fails here, before the job is queued

    # -- decoding --------------------------------------------------------------------------------
    def step(self, running: Sequence[GenerationJob], emit: EmitFn) -> None:
        """One engine step: every running job gains at most one token (see Engine.step)."""
        self.engine.step(running, emit)

    def statistics(self) -> dict[str, int]:
        return self.engine.statistics()
