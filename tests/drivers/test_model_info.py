"""Reading a model folder without loading it: config.json, safetensors headers, chat template."""

from __future__ import annotations

import ast
import json
import struct
from pathlib import Path

import pytest

from llmos.drivers import model_info
from llmos.kernel.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file whose header describes `tensors` (name -> dtype, shape); zero data."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = {"F32": 4, "BF16": 2, "F16": 2, "I8": 1}[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def hf_folder(folder: Path, architecture: str = "LlamaForCausalLM", template: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": [architecture], "model_type": "llama", "max_position_embeddings": 2048,
        "num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 100}))
    write_safetensors(folder / "model.safetensors", {"embed": ("F32", [100, 8]), "norm": ("BF16", [8])})
    (folder / "tokenizer.json").write_text("{}")
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    return folder


def test_folder_info_reads_config_and_headers(tmp_path):
    info = model_info.folder_info(hf_folder(tmp_path / "m"))
    assert (info.architecture, info.parameters, info.context_length, info.dtype) == ("LlamaForCausalLM", 808, 2048,
                                                                                    "F32+BF16")
    assert info.driver == model_info.LLAMA_ENGINE
    assert model_info.folder_info(hf_folder(tmp_path / "g", "Gemma3ForCausalLM")).driver == model_info.GENERIC


@pytest.mark.parametrize("config, label", [
    ({"architectures": ["Gemma3ForCausalLM"], "num_attention_heads": 4,
      "layer_types": ["sliding_attention", "full_attention"]}, model_info.GENERIC),
    ({"architectures": ["Gemma3ForConditionalGeneration"], "text_config": {"num_attention_heads": 4}},
     model_info.GENERIC),
    ({"architectures": ["MambaForCausalLM"], "state_size": 16},
     "unsupported: it has no attention heads (a recurrent model?)"),
    ({"architectures": ["Qwen3NextForCausalLM"], "num_attention_heads": 4,
      "layer_types": ["linear_attention", "full_attention"]},
     "unsupported: its linear_attention layers keep state that is not K/V"),
    ({"architectures": ["Gemma3TextModel"], "num_attention_heads": 4, "use_bidirectional_attention": True},
     "unsupported: its attention is bidirectional, not causal"),
    ({"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4}, model_info.LLAMA_ENGINE),
])
def test_the_driver_says_which_path_runs_the_model_from_its_config(config, label):
    """The engine's choice (drivers/generic.py refuses by the same generic_refusal), read without torch."""
    assert model_info.driver_label(config["architectures"][0], model_info.generic_refusal(config)) == label


def test_bad_files_are_config_errors_naming_them(tmp_path):
    folder = hf_folder(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ConfigError, match="model.safetensors: not a safetensors file"):
        model_info.folder_info(folder)
    (folder / "config.json").write_text("{")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        model_info.folder_info(folder)


def test_parameters_read_as_people_write_them():
    assert [model_info.format_parameters(n) for n in (134_515_008, 1_236_000_000, 7_241_000_000, 512, None)] == \
        ["135M", "1.2B", "7.2B", "512", "-"]


def test_tool_format_is_named_from_the_chat_template(tmp_path):
    hermes = "{% if tools %}<tool_call>{{ tools }}</tool_call>{% endif %}"
    assert "Hermes" in model_info.tool_format(hermes)
    assert model_info.tool_format("{{ messages }}") is None
    assert "not recognised" in model_info.tool_format("{% for tool in tools %}{{ tool }}{% endfor %}")
    folder = hf_folder(tmp_path / "m", template="line\n" * 20)
    assert model_info.template_head(model_info.chat_template(folder)).endswith("(12 more lines)")


def test_fast_architectures_are_the_llama_engines():
    """drivers/llama.py imports torch, so model_info repeats its list: they must agree."""
    tree = ast.parse((ROOT / "drivers" / "llama.py").read_text())
    value = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "SUPPORTED_ARCHITECTURES" for t in node.targets))
    assert ast.literal_eval(value) == model_info.FAST_ARCHITECTURES
