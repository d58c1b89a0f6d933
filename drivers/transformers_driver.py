"""The transformers driver: a Hugging Face causal LM, tokenized with its own chat
template and served to many jobs at once by the continuous-batching engine."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from llmos.drivers import compute
from llmos.drivers.compute import cpu_flags  # the dtype reads it through this module (tests patch it here)
from llmos.drivers.engine import Engine, EngineConfig
from llmos.drivers.llama_checkpoint import CheckpointLlama, CheckpointMismatch, load_checkpoint, read_config
from llmos.drivers.tokenizer import ChatTokenizer, read_tokenizer
from llmos.kernel.blocks import tokens_needed
from llmos.kernel.errors import ConfigError, ContextOverflow, InvalidRequest
from llmos.kernel.model import ChatMessage, EmitFn, GenerationJob

log = logging.getLogger(__name__)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_ENV = "LLMOS_DTYPE"  # float32 | bfloat16 | auto (the default)
_requested_dtype: ContextVar[str | None] = ContextVar("llmos_requested_dtype", default=None)


@contextmanager
def requested_dtype(name: str | None) -> Iterator[None]:
    """Models loaded inside take this dtype on the CPU (None: LLMOS_DTYPE, else auto)."""
    token = _requested_dtype.set(name)
    try:
        yield
    finally:
        _requested_dtype.reset(token)


def pick_device_and_attention() -> tuple[str, str, torch.dtype]:
    """FlashAttention 2 on CUDA when flash-attn is installed, else PyTorch's sdpa."""
    if torch.cuda.is_available():
        if importlib.util.find_spec("flash_attn") is not None:
            return "cuda", "flash_attention_2", torch.bfloat16
        log.warning("CUDA is available but flash-attn is not installed; using sdpa")
        return "cuda", "sdpa", torch.bfloat16
    return "cpu", "sdpa", cpu_dtype()


def cpu_dtype() -> torch.dtype:
    """bfloat16 where the CPU multiplies it natively (AVX-512 BF16 or AMX), else float32.

    On such a CPU bfloat16 steps are about 1.5x faster and SmolLM2's perplexity moves
    by 0.5% (bench/quality.py); without those instructions bfloat16 is emulated and slower.
    `load_model(..., dtype=)` or LLMOS_DTYPE=float32|bfloat16 overrides the choice.
    """
    wanted = (_requested_dtype.get() or os.environ.get(DTYPE_ENV) or "auto").strip().lower() or "auto"
    if wanted != "auto":
        if wanted not in DTYPES:
            raise ConfigError(f"dtype {wanted!r} (from load_model or {DTYPE_ENV}): expected one of auto, "
                              f"{', '.join(DTYPES)}")
        return DTYPES[wanted]
    native = cpu_flags() & {"avx512_bf16", "amx_bf16"}
    return torch.bfloat16 if native and torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def load_transformers_folder(folder: Path, name: str | None = None) -> TransformersDriver:
    """Any local Hugging Face causal-LM folder (config.json + safetensors), as a driver.
    Run it on the compute thread (llmos.drivers.registry.load_driver does). A Llama-shaped
    checkpoint on the CPU is read without transformers' model classes (drivers/llama_checkpoint.py:
    seconds less of a cold start); any other model through `from_pretrained`. Likewise its
    tokenizer (drivers/tokenizer.py), else transformers' AutoTokenizer."""
    torch.set_num_threads(default_threads())
    device, attn, dtype = pick_device_and_attention()
    model = _read_checkpoint(folder, dtype) if device == "cpu" else None
    if model is None:
        model = _from_pretrained(folder, dtype, attn).to(device).eval()
    log.info("%s: %s, %s on %s, %d threads", name or folder.name, _described(model), dtype, device,
             torch.get_num_threads())
    return TransformersDriver(name or folder.name, model, read_tokenizer(folder) or _auto_tokenizer(folder),
                              device=device, folder=folder)


def _auto_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _read_checkpoint(folder: Path, dtype: torch.dtype) -> Any:
    config = read_config(folder)
    if config is None:
        return None
    try:
        return load_checkpoint(folder, config, dtype)
    except CheckpointMismatch as exc:
        log.info("%s; loading it through transformers", exc)
        return None


def _from_pretrained(folder: Path, dtype: torch.dtype, attn: str) -> Any:
    from transformers import AutoModelForCausalLM

    from llmos.drivers.weights import quiet_hf_progress

    with quiet_hf_progress():
        try:
            return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn)
        except ValueError as exc:  # an architecture without sdpa (Gemma 2: its scores are soft-capped)
            if "attention implementation" not in str(exc):
                raise
            return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")


def _described(model: Any) -> str:
    implementation = getattr(model.config, "_attn_implementation", None)
    return f"{implementation} attention" if implementation else "read by llmos (llama engine)"


class TransformersDriver:
    prepares_inline = True  # `prepare` tokenizes and checks, no I/O: short jobs are prepared on the loop

    def __init__(self, name: str, model: Any, tokenizer: Any, *, device: str = "cpu",
                 config: EngineConfig | None = None, folder: Path | None = None) -> None:
        self.name = name
        self.model = model  # what the engine runs: transformers' module, or llama_checkpoint's weights
        self.folder = folder
        self._hf_model: Any = None if isinstance(model, CheckpointLlama) else model
        self._hf_tokenizer: Any = None if isinstance(tokenizer, ChatTokenizer) else tokenizer
        self.tokenizer = tokenizer
        self.device = device
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos_ids = self._eos_ids()
        config = config or EngineConfig()
        self.max_batch = config.max_batch
        self.engine = Engine(model, tokenizer, eos_ids=self.eos_ids, context_length=self.context_length,
                             config=config, dtype=model.dtype, device=device)
        self.kv = self.engine.blocks  # the kernel's scheduler admits by these KV blocks

    def _eos_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        if isinstance(self.model, CheckpointLlama):
            ids.update(self.model.eos_token_ids())
        else:
            configured = getattr(self.model.generation_config, "eos_token_id", None)
            ids.update(configured if isinstance(configured, list) else [configured])
        return frozenset(i for i in ids if i is not None)

    @property
    def hf_model(self) -> Any:
        """transformers' module of the same checkpoint in the same dtype: what tests and
        benchmarks hold the engine to (`generate`, logits, peft). Where the engine runs weights
        read without transformers, it is loaded from the folder on first use (a second copy)."""
        if self._hf_model is None:
            assert self.folder is not None  # a module read by llmos always comes from a folder
            self._hf_model = _from_pretrained(self.folder, self.model.dtype, "sdpa").eval()
        return self._hf_model

    @property
    def memory_bytes(self) -> int:
        """The bytes of its weights, each storage once (tied and fused ones share), for the
        kernel's model budget (kernel/model_pool.py); the KV memory, committed as it is
        used, is not counted."""
        seen: dict[int, int] = {}
        for tensor in (*self.model.parameters(), *self.model.buffers()):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())

    @property
    def hf_tokenizer(self) -> Any:
        """transformers' tokenizer of the same folder (its whole API: batches, tensors), loaded
        on first use where the driver reads the folder's tokenizer itself."""
        if self._hf_tokenizer is None:
            assert self.folder is not None  # a ChatTokenizer always comes from a folder
            self._hf_tokenizer = _auto_tokenizer(self.folder)
        return self._hf_tokenizer

    # -- prompts -----------------------------------------------------------------------------
    def tokenize(self, messages: Sequence[ChatMessage]) -> list[int]:
        encoded = self.tokenizer.apply_chat_template([m.model_dump() for m in messages], add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)
        return list(encoded["input_ids"])

    def prepare(self, job: GenerationJob) -> None:
        if job.adapter is not None and job.adapter not in self.adapters():
            raise InvalidRequest(f"{self.name} has no adapter {job.adapter!r} loaded")
        if not job.prompt_ids:  # else tokenized by this driver already (a context window's exact count)
            job.prompt_ids = self._tokenize(job)
        if job.options is not None:
            job.option_ids = [self.tokenizer.encode(option, add_special_tokens=False) for option in job.options]
            if not all(job.option_ids):
                raise InvalidRequest("an option must be at least one token long")
        if len(job.prompt_ids) >= self.context_length:
            raise ContextOverflow(f"the prompt is {len(job.prompt_ids)} tokens; {self.name}'s context window "
                                  f"is {self.context_length}, leaving no room for a reply")
        self._fit_kv_memory(job)
        self.engine.init_state(job)  # a bad json_schema fails here, before the job is queued

    def _fit_kv_memory(self, job: GenerationJob) -> None:
        """A job must fit the KV memory alone, its whole reply included (else it would wait
        for blocks forever): its prompt must, and its reply is cut to what is left."""
        room = self.engine.capacity_tokens() - tokens_needed(job)
        if room < 1:
            raise ContextOverflow(f"the prompt needs {tokens_needed(job)} tokens of KV memory; the engine's budget "
                                  f"holds {self.engine.capacity_tokens()} (--kv-cache-mb, LLMOS_KV_CACHE_MB)")
        if job.sampling.max_tokens > room:
            job.sampling = job.sampling.model_copy(update={"max_tokens": room})

    def _tokenize(self, job: GenerationJob) -> list[int]:
        if job.messages is None:
            # The tokenizer's own special tokens: a BOS where it adds one (Gemma's text degenerates
            # without it; SmolLM2's adds none), as the chat template starts with one.
            return self.tokenizer.encode(job.prompt or "")
        return self.tokenize(job.messages)

    # -- LoRA adapters, served side by side in one batch (drivers/lora.py) --------------------------
    def load_adapter(self, name: str, folder: Path) -> None:
        """Serve a PEFT LoRA adapter of this model as `name` from now on, without a restart
        (jobs with `adapter=name` use it). Blocking: it runs between two engine steps."""
        compute.call(self.engine.load_adapter, name, folder)

    def unload_adapter(self, name: str) -> None:
        compute.call(self.engine.unload_adapter, name)

    def adapters(self) -> list[str]:
        return list(self.engine.runner.adapters.adapters)

    # -- decoding --------------------------------------------------------------------------------
    async def step(self, running: Sequence[GenerationJob], emit: EmitFn) -> None:
        """One engine step on the compute thread: every running job gains at most one token
        (see Engine.step). Once started it completes, even if the caller is cancelled."""
        await compute.run(self.engine.step, running, emit)

    async def burst(self, running: Sequence[GenerationJob], emit: EmitFn, go_on: Callable[[], bool],
                    max_steps: int) -> int:
        """Up to `max_steps` engine steps back to back on the compute thread (see Engine.burst)."""
        return await compute.run(self.engine.burst, running, emit, go_on, max_steps)

    def statistics(self) -> dict[str, int]:
        return self.engine.statistics()
