"""What a model folder holds, read cheaply: config.json, the safetensors headers (never the
weights) and the chat template. No torch: `llmos models` lists models in a fraction of a second."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.kernel.errors import ConfigError

# The architectures llmos's fast engine runs (drivers/llama.py SUPPORTED_ARCHITECTURES, which
# imports torch, so it is repeated here; tests/drivers/test_model_info.py checks they agree).
FAST_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
LLAMA_ENGINE = "llama engine"
GENERIC = "generic transformers"
UNSUPPORTED = "unsupported"
REMOTE = "remote"
# The layers whose state the generic path (drivers/generic.py) keeps: K/V in the paged pool.
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")
# Settings only a model with recurrent (state-space) layers has, as prefixes of config keys.
RECURRENT_SETTINGS = ("mamba_", "ssm_")

TEMPLATE_LINES = 8
# Beside a model's weights, what quantizing it made and measured (drivers/quant_cache.py,
# which imports torch: the names are here so that `llmos models` reads them without it).
QUANT_FOLDER = "llmos-quant"
CHOICE_PREFIX = "choice-"  # CHOICE_PREFIX + "REQUEST-DTYPE-...json": what measuring chose

# Markers of the tool-call formats chat templates render, and the format's name.
TOOL_FORMATS = (
    ("<tool_call>", "<tool_call>{json}</tool_call> (Hermes/Qwen style)"),
    ("[TOOL_CALLS]", "[TOOL_CALLS] [json] (Mistral style)"),
    ("<|python_tag|>", "<|python_tag|> / JSON (Llama 3.1 style)"),
    ("<start_function_call>", "<start_function_call>call:name{...} (FunctionGemma style)"),
    ("functools[", "functools[json] (Phi style)"),
)


@dataclass(frozen=True)
class FolderInfo:
    """A Hugging Face model folder's vital statistics; None where the folder does not say."""

    architecture: str | None
    parameters: int | None
    context_length: int | None
    dtype: str | None  # the stored weights' dtypes, e.g. "F32" or "BF16+F32"
    quantization: str | None  # config.json's quantization_config.quant_method (gptq, awq, ...)
    layers: int | None
    hidden_size: int | None
    vocab_size: int | None
    model_type: str | None
    refusal: str | None = None  # why the generic path cannot run it (generic_refusal), if it cannot

    @property
    def driver(self) -> str:
        return driver_label(self.architecture, self.refusal)


def driver_label(architecture: str | None, refusal: str | None = None) -> str:
    """Which path runs an architecture: the fast llama engine, the generic path (the model's own
    forward over the engine's paged KV), or neither (and why)."""
    if architecture in FAST_ARCHITECTURES:
        return LLAMA_ENGINE
    return f"{UNSUPPORTED}: {refusal}" if refusal else GENERIC


def generic_refusal(config: Mapping[str, Any]) -> str | None:
    """Why the generic path cannot run a model of this configuration (config.json, or a loaded
    config's to_dict()); None if it can. The path keeps every layer's state as K/V in the paged
    pool and masks attention causally itself, so every layer must be causal attention."""
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else {}
    setting = lambda key: config.get(key, text.get(key))  # noqa: E731 - multimodal configs nest the LM's
    if all(setting(key) is None for key in ("num_attention_heads", "n_head", "num_heads")):
        return "it has no attention heads (a recurrent model?)"
    others = sorted(set(setting("layer_types") or ()) - set(ATTENTION_LAYER_TYPES))
    if others:
        return f"its {', '.join(others)} layers keep state that is not K/V"
    hybrid = sorted(key for key in {**text, **config} if key.startswith(RECURRENT_SETTINGS))
    if hybrid:  # Jamba and its kin name no layer types: their Mamba settings say it
        return f"it has recurrent layers beside attention ({', '.join(hybrid[:3])}...), whose state is not K/V"
    if setting("use_bidirectional_attention") or setting("is_causal") is False:
        return "its attention is bidirectional, not causal"
    return None


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (a Hugging Face model folder has a config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return config


def folder_info(folder: Path) -> FolderInfo:
    config = read_config(folder)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    setting = lambda key: config.get(key, text.get(key))  # noqa: E731 - multimodal configs nest the LM's
    architectures = config.get("architectures") or [None]
    parameters, dtypes = tensor_summary(sorted(folder.glob("*.safetensors")))
    quant = config.get("quantization_config")
    return FolderInfo(architecture=architectures[0], parameters=parameters,
                      context_length=setting("max_position_embeddings"), dtype=dtypes,
                      quantization=quant.get("quant_method") if isinstance(quant, dict) else None,
                      layers=setting("num_hidden_layers"), hidden_size=setting("hidden_size"),
                      vocab_size=setting("vocab_size"), model_type=config.get("model_type"),
                      refusal=generic_refusal(config))


def tensor_summary(files: list[Path]) -> tuple[int | None, str | None]:
    """The parameters the files hold and their dtypes, from the headers alone (None: no files)."""
    if not files:
        return None, None
    count, dtypes = 0, Counter[str]()
    for path in files:
        for shape, dtype in tensor_shapes(path):
            elements = math.prod(shape)
            count += elements
            dtypes[dtype] += elements
    return count, "+".join(dtype for dtype, _ in dtypes.most_common())


def tensor_shapes(path: Path) -> list[tuple[list[int], str]]:
    """Each tensor's shape and dtype in a safetensors file, read from its header by the
    safetensors library (the file is mapped, no weight is read; numpy, not torch)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as file:
            slices = [file.get_slice(name) for name in file.keys()]
            return [(list(piece.get_shape()), str(piece.get_dtype())) for piece in slices]
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{path}: not a safetensors file ({exc})") from None


def format_parameters(count: int | None) -> str:
    """134_515_008 -> "135M"; 1_236_000_000 -> "1.2B"."""
    if count is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(count)


def chat_template(folder: Path) -> str | None:
    """The folder's chat template: chat_template.jinja, else tokenizer_config.json's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    tokenizer_config = folder / "tokenizer_config.json"
    if not tokenizer_config.is_file():
        return None
    try:
        template = json.loads(tokenizer_config.read_text()).get("chat_template")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def template_head(template: str | None, lines: int = TEMPLATE_LINES) -> str | None:
    if template is None:
        return None
    head = template.strip().splitlines()[:lines]
    more = len(template.strip().splitlines()) - len(head)
    return "\n".join(head) + (f"\n... ({more} more lines)" if more > 0 else "")


def tool_format(template: str | None) -> str | None:
    """The tool-call format the chat template renders, if it renders tools at all."""
    if template is None or not re.search(r"\btools\b", template):
        return None
    return next((name for marker, name in TOOL_FORMATS if marker in template),
                "the template renders tools (format not recognised)")


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def kept_quantizations(folder: Path) -> list[tuple[str, str]]:
    """What measuring chose for the model in `folder` on this machine and was kept, as
    ("auto, float32", "int4 up to 2 rows, then int8 (decode batches up to 16 rows)") by
    request and dtype; a file that cannot be read is left out."""
    kept = []
    for path in sorted((folder / QUANT_FOLDER).glob(f"{CHOICE_PREFIX}*.json")):
        parts = path.stem.removeprefix(CHOICE_PREFIX).split("-")
        if len(parts) < 2:  # not a name quant_cache gives
            continue
        request, dtype = parts[:2]
        try:
            described = json.loads(path.read_text()).get("described")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(described, str):
            kept.append((f"{request}, {dtype}", described))
    return kept


def forget_quantizations(folder: Path) -> int:
    """Remove what measuring chose for the model in `folder` (the next load measures again);
    how many choices were kept."""
    kept = list((folder / QUANT_FOLDER).glob(f"{CHOICE_PREFIX}*.json"))
    for path in kept:
        path.unlink(missing_ok=True)
    return len(kept)
