"""`llmos models ...` through typer's CliRunner, in the test's own LLMOS_HOME."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmos.apps.cli import app

runner = CliRunner()


def models(*args: str):  # noqa: ANN201
    return runner.invoke(app, ["models", *args], env={"COLUMNS": "200"})  # a table's rows on one line each


def hf_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "num_attention_heads": 4,
                                                    "max_position_embeddings": 4096}))
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1000, 1000], "data_offsets": [0, 2_000_000]}}).encode()
    with (folder / "model.safetensors").open("wb") as file:
        file.write(struct.pack("<Q", len(header)) + header)
        file.truncate(8 + len(header) + 2_000_000)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "chat_template.jinja").write_text("{% if tools %}<tool_call>{{ tools }}</tool_call>{% endif %}\n"
                                                "{{ messages }}")
    return folder


def test_bare_models_lists_like_list():
    bare, listed = models(), models("list")
    assert bare.exit_code == listed.exit_code == 0 and "smollm2 *" in bare.output
    assert bare.output == listed.output


def test_import_create_show_list_default_rm(tmp_path):
    folder = hf_folder(tmp_path / "qwen-tiny")
    assert models("import", str(folder)).exit_code == 0
    done = models("create", "helper", "--from", "qwen-tiny", "--system", "Be terse.", "--param", "temperature=0",
                  "--param", "stop=END")
    assert done.exit_code == 0, done.output
    listed = models("list")
    assert "qwen-tiny" in listed.output and "1.0M" in listed.output and "generic" in listed.output
    shown = models("show", "helper")
    assert shown.exit_code == 0
    for expected in ("derived from", "qwen-tiny", "Be terse.", "temperature = 0.0", "<tool_call>", "Hermes",
                     "chat template"):
        assert expected in shown.output, expected
    assert models("default", "helper").exit_code == 0
    assert models("default").output.strip() == "helper"
    assert "helper *" in models("list").output
    assert models("rm", "helper").exit_code == 0 and models("rm", "qwen-tiny").exit_code == 0
    assert folder.is_dir() and models("default").output.strip() == "smollm2"


def test_cp_and_add():
    assert models("add", "big", "--url", "http://gpu:8000/v1", "--model-id", "qwen").exit_code == 0
    assert models("cp", "big", "big2").exit_code == 0
    listed = models("list")
    assert "big2" in listed.output and "remote" in listed.output


def test_user_mistakes_are_one_line_errors(llmos_home, tmp_path):
    for args, message in [(("rm", "smollm2"), "cannot be removed"),
                          (("show", "ghost"), "no model named 'ghost'"),
                          (("create", "x", "--from", "smollm2", "--param", "temperature=-1"), "temperature"),
                          (("create", "x", "--from", "smollm2", "--adapter", str(tmp_path)), "adapter_config.json"),
                          (("import", str(tmp_path)), "config.json"),
                          (("add", "r", "--url", "ftp://x"), "base_url"),
                          (("pull", "gpt-3"), "no model named 'gpt-3' to pull")]:
        done = models(*args)
        assert done.exit_code == 1 and message in done.output and "Traceback" not in done.output, (args, done.output)
    (llmos_home / "library.json").write_text("{oops")
    done = models("list")
    assert done.exit_code == 1 and "library.json: not valid JSON" in done.output


@pytest.mark.model
def test_measure_times_the_kernels_again_and_show_lists_what_it_kept():
    done = models("measure", "smollm2", "--dtype", "float32")
    assert done.exit_code == 0, done.output
    chosen = done.output.strip().split("smollm2 (auto): ", 1)[1].split(";")[0]
    assert chosen == "none" or "decode batches up to" in chosen
    shown = models("--local", "show", "smollm2")
    assert shown.exit_code == 0 and f"quantization (auto, float32) │ {chosen}" in shown.output, shown.output
    again = models("measure", "smollm2", "--dtype", "float32")
    assert again.exit_code == 0 and "1 earlier choice(s) forgotten" in again.output


def test_measure_mistakes_are_one_line_errors():
    assert models("add", "far", "--url", "http://127.0.0.1:9/v1", "--model-id", "x").exit_code == 0
    for args, message in [(("measure", "ghost"), "no model named 'ghost'"),
                          (("measure", "far"), "far has no weights here to quantize"),
                          (("measure", "smollm2", "--quant", "int3"), "int3")]:
        done = models(*args)
        assert done.exit_code == 1 and message in done.output and "Traceback" not in done.output, (args, done.output)
