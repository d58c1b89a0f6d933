"""A Llama-architecture checkpoint folder (config.json + safetensors) read straight into the
torch modules the llama engine runs (drivers/llama.py), without transformers' model classes.

Importing those classes costs ~3 s of a cold start (they pull in torch's dynamo and
distributed tensors) and `from_pretrained` another ~1-2 s; here the safetensors are mapped
and cast, nothing else. The modules keep Hugging Face's names and arithmetic where the
engine uses them (the embedding, LlamaRMSNorm, the default rotary embedding, the output
projection), so the engine's outputs are the same whichever way the model was loaded
(tests/drivers/test_llama_checkpoint.py holds them to HF's bit for bit).

Only what the engine is known to run the same as Hugging Face loads here: Llama or
Mistral, SiLU, the default rotary embedding (no scaling), no sliding window shorter than
the context. Anything else returns None from `read_config`, and the caller loads the model
through transformers as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from llmos.drivers.model_info import FAST_ARCHITECTURES
from llmos.kernel.errors import ConfigError

DEFAULT_ROPE_THETA = 10000.0  # LlamaConfig's default


class CheckpointMismatch(ConfigError):
    """The folder's weights are not laid out as this module reads them (the caller can still
    load them through transformers)."""


class CheckpointConfig(BaseModel):
    """The fields of a Llama/Mistral config.json the engine reads, with LlamaConfig's defaults.
    The engine reads them as attributes, as it reads a transformers config."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    architectures: list[str]
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float | None = None  # transformers 4's spelling
    rope_scaling: dict[str, Any] | None = None
    rope_parameters: dict[str, Any] | None = None  # transformers 5's
    sliding_window: int | None = None
    eos_token_id: int | list[int] | None = None

    def model_post_init(self, _context: Any) -> None:
        # Filled in as LlamaConfig fills them, so the engine reads the same numbers either way.
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def rope_type(self) -> str:
        parameters = self.rope_parameters or self.rope_scaling or {}
        return str(parameters.get("rope_type", parameters.get("type", "default")))

    @property
    def base(self) -> float:
        theta = (self.rope_parameters or {}).get("rope_theta", self.rope_theta)
        return float(theta if theta is not None else DEFAULT_ROPE_THETA)

    def runs_here(self) -> bool:
        """Whether these modules compute what transformers' would for this config."""
        window = self.sliding_window
        return (bool(self.architectures) and self.architectures[0] in FAST_ARCHITECTURES and self.hidden_act == "silu"
                and self.rope_type == "default" and (window is None or window >= self.max_position_embeddings))


def read_config(folder: Path) -> CheckpointConfig | None:
    """The folder's config, if this module loads the model (see the module's docstring)."""
    try:
        raw = json.loads((folder / "config.json").read_text())
        config = CheckpointConfig.model_validate(raw)
    except (OSError, ValueError, ValidationError):  # transformers' loader reports a broken folder in its words
        return None
    return config if config.runs_here() else None


class Linear(nn.Linear):
    """nn.Linear without the random initialisation (its weights are read right after; and on
    the meta device the initialisers import torch's dynamo, a second of a cold start)."""

    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


class RMSNorm(nn.Module):
    """LlamaRMSNorm's arithmetic: statistics in float32, scaled in the input's dtype
    (F.rms_norm of the float32 upcast is bitwise HF's x * rsqrt(mean(x²) + eps))."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class Rotary(nn.Module):
    """LlamaRotaryEmbedding of the default type: cos and sin in float32, then cast."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: CheckpointConfig) -> None:
        super().__init__()
        q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim  # type: ignore[operator]
        self.q_proj = Linear(cfg.hidden_size, q, bias=cfg.attention_bias)
        self.k_proj = Linear(cfg.hidden_size, kv, bias=cfg.attention_bias)
        self.v_proj = Linear(cfg.hidden_size, kv, bias=cfg.attention_bias)
        self.o_proj = Linear(q, cfg.hidden_size, bias=cfg.attention_bias)


class MLP(nn.Module):
    def __init__(self, cfg: CheckpointConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act_fn = nn.SiLU()


class DecoderLayer(nn.Module):
    def __init__(self, cfg: CheckpointConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Body(nn.Module):
    def __init__(self, cfg: CheckpointConfig) -> None:
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CheckpointLlama(nn.Module):
    """The weights of a Llama checkpoint under Hugging Face's module names, with no forward of
    its own: the llama engine runs them. `config` reads as a transformers config does."""

    def __init__(self, cfg: CheckpointConfig, folder: Path) -> None:
        super().__init__()
        self.config = cfg
        self.folder = folder
        self.model = Body(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def eos_token_ids(self) -> list[int]:
        """generation_config.json's end-of-sequence ids, else config.json's (as transformers
        derives a generation config from the model's)."""
        configured: Any = self.config.eos_token_id
        path = self.folder / "generation_config.json"
        if path.is_file():
            try:
                configured = json.loads(path.read_text()).get("eos_token_id", configured)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: unreadable ({exc})") from None
        ids = configured if isinstance(configured, list) else [configured]
        return [int(i) for i in ids if i is not None]


def load_checkpoint(folder: Path, cfg: CheckpointConfig, dtype: torch.dtype) -> CheckpointLlama:
    """The checkpoint's weights in `dtype` on the CPU. The modules are made on the meta device
    (no random initialisation) and take the mapped tensors as they are, cast once."""
    with torch.device("meta"):
        model = CheckpointLlama(cfg, folder)
    weights = _read_weights(folder, dtype)
    tied = cfg.tie_word_embeddings  # untied without an lm_head: a mismatch (transformers would draw one at random)
    if tied:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:  # missing or unexpected tensors, or shapes the config does not give
        raise CheckpointMismatch(f"{folder}: the weights are not the modules config.json describes: {exc}") from None
    if tied:  # one parameter, as transformers ties them
        model.lm_head.weight = model.model.embed_tokens.weight
    head_dim = cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads
    model.model.rotary_emb = Rotary(head_dim, cfg.base)  # a buffer computed, never stored
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def _weight_files(folder: Path) -> list[Path]:
    """The checkpoint's files as transformers picks them: the index's shards, else
    model.safetensors (a folder may also hold other formats' files, e.g. Mistral's consolidated)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise CheckpointMismatch(f"{index}: unreadable ({exc})") from None
        return [folder / shard for shard in sorted(shards)]
    single = folder / "model.safetensors"
    if not single.is_file():
        raise CheckpointMismatch(f"{folder}: no model.safetensors")
    return [single]


def _read_weights(folder: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    files = _weight_files(folder)
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            weights.update(load_file(str(file)))
        except (OSError, SafetensorError) as exc:
            raise CheckpointMismatch(f"{file}: unreadable ({exc})") from None
    return {name: tensor.to(dtype) for name, tensor in weights.items()}
