"""The model library: its manifest, the commands' semantics, and loading what it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import llmos
from llmos import booting, library
from llmos.drivers.derived import DerivedDriver
from llmos.kernel.model import ChatMessage
from llmos.testing import FakeDriver, library_folder



def fake_convert(gguf: Path, cache: Path) -> None:
    library_folder(cache)


# -- the manifest -----------------------------------------------------------------------------------------
def test_the_manifest_round_trips(llmos_home, tmp_path):
    lib = library.Library(default="mine", models={
        "mine": library.FolderEntry(path=str(tmp_path)),
        "pirate": library.DerivedEntry(base="mine", system="Arr.", params={"temperature": 0.5, "stop": ["\n"]}),
        "big": library.RemoteEntry(remote={"base_url": "http://gpu:8000/v1", "model": "qwen"})})
    library.write_library(lib, llmos_home)
    assert library.read_library(llmos_home) == lib
    assert not list(llmos_home.glob(".library.json-*"))  # the temporary file was renamed over the manifest


def test_no_manifest_is_an_empty_library(llmos_home):
    assert library.read_library(llmos_home).models == {}
    assert library.default_model(llmos_home) == "smollm2"


def test_a_corrupt_manifest_is_an_error_naming_the_file(llmos_home):
    (llmos_home / "library.json").write_text("{not json")
    with pytest.raises(llmos.ConfigError, match=r"library\.json: not valid JSON"):
        library.read_library(llmos_home)


def test_a_bad_entry_is_an_error_naming_it(llmos_home):
    (llmos_home / "library.json").write_text(json.dumps(
        {"models": {"pirate": {"kind": "derived", "base": "smollm2", "params": {"temperature": 99}}}}))
    with pytest.raises(llmos.ConfigError, match=r"library\.json: models\.pirate\.derived\.params\.temperature"):
        library.read_library(llmos_home)


def test_a_corrupt_manifest_stops_no_builtin_model_from_resolving(llmos_home):
    (llmos_home / "library.json").write_text("[]")
    assert library.lookup("smollm2", llmos_home) is None
    with pytest.raises(llmos.ConfigError, match="library.json"):
        library.lookup("mine", llmos_home)


# -- import ------------------------------------------------------------------------------------------------
def test_a_folder_is_imported_by_reference_and_never_deleted(llmos_home, tmp_path):
    folder = library_folder(tmp_path / "My Model")
    assert library.import_path(folder) == "my-model"
    assert library.read_library().models["my-model"] == library.FolderEntry(path=str(folder))
    assert "folder" in library.remove("my-model") and (folder / "model.safetensors").is_file()


@pytest.mark.parametrize("missing, message", [("config.json", "config.json: no such file"),
                                              ("model.safetensors", "no \\*.safetensors"),
                                              ("tokenizer.json", "no tokenizer")])
def test_an_incomplete_folder_is_refused(tmp_path, missing, message):
    folder = library_folder(tmp_path / "m")
    (folder / missing).unlink()
    with pytest.raises(llmos.ConfigError, match=message):
        library.import_path(folder)


def test_a_gguf_is_converted_under_the_home_and_removed_with_its_entry(llmos_home, tmp_path):
    gguf = tmp_path / "Tiny-1M.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    name = library.import_path(gguf, "tiny-test-model", convert=fake_convert)
    cache = llmos_home / "models" / name
    assert library.read_library().models[name] == library.GgufEntry(source=str(gguf.resolve()), folder=str(cache))
    from llmos.library_listing import list_models

    row = next(r for r in list_models() if r.name == name)
    assert (row.kind, row.parameters, row.dtype) == ("gguf", "4", "F32, from Q4_K_M GGUF")
    assert "converted weights" in library.remove(name) and not cache.exists()


def test_what_is_neither_folder_nor_gguf_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(llmos.ConfigError, match="a .gguf file"):
        library.import_path(tmp_path / "notes.txt")


# -- names, create, cp, rm, default, add ---------------------------------------------------------------------
def test_names_are_checked(tmp_path):
    folder = library_folder(tmp_path / "m")
    for bad, message in [("smollm2", "built-in"), ("SmolLM2-135M-Instruct", "built-in"), ("a/b", "not a model name"),
                         ("openai:x", "not a model name")]:
        with pytest.raises(llmos.ConfigError, match=message):
            library.import_path(folder, bad)
    library.import_path(folder, "mine")
    with pytest.raises(llmos.ConfigError, match="has a model named 'MINE'|has a model named"):
        library.import_path(folder, "MINE")


def test_create_validates_base_params_and_adapter(tmp_path):
    with pytest.raises(llmos.UnknownModel, match="no model named 'nope'"):
        library.create("pirate", "nope")
    with pytest.raises(llmos.ConfigError, match="top_p"):
        library.create("pirate", "smollm2", params=library.parse_params(["top_p=0"]))
    with pytest.raises(llmos.ConfigError, match="adapter_config.json"):
        library.create("pirate", "smollm2", adapter=tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    params = library.parse_params(["temperature=0", "max_tokens=8", "stop=</s>", "stop=\n", "seed=3"])
    library.create("pirate", "smollm2", system="Arr.", adapter=tmp_path, params=params)
    entry = library.read_library().models["pirate"]
    assert entry.params.model_dump(exclude_none=True) == {"temperature": 0.0, "max_tokens": 8, "stop": ("</s>", "\n"),
                                                          "seed": 3}
    assert entry.adapter == str(tmp_path.resolve())


@pytest.mark.parametrize("pair", ["temperature", "json_schema={}", "max_tokens=0", "temperature=hot"])
def test_bad_params_are_config_errors(pair):
    with pytest.raises(llmos.ConfigError):
        library.parse_params([pair])


def test_cp_rm_and_default(llmos_home, tmp_path):
    library.import_path(library_folder(tmp_path / "m"), "mine")
    library.create("pirate", "mine", system="Arr.")
    library.copy("pirate", "pirate2")
    library.copy("smollm2", "smol")  # a built-in model is copied as a derivation changing nothing
    models = library.read_library().models
    assert models["pirate2"] == models["pirate"] and models["smol"] == library.DerivedEntry(base="smollm2")
    with pytest.raises(llmos.ConfigError, match="base of pirate, pirate2"):
        library.remove("mine")
    with pytest.raises(llmos.ConfigError, match="built-in model: it cannot be removed"):
        library.remove("smollm2")
    with pytest.raises(llmos.UnknownModel, match="no model named 'ghost'"):
        library.remove("ghost")
    library.set_default("PIRATE")
    assert library.default_model() == "pirate"
    library.remove("pirate")
    assert library.default_model() == "smollm2"  # removing the default falls back to the built-in one
    with pytest.raises(llmos.UnknownModel):
        library.set_default("pirate")


def test_add_a_remote_model(llmos_home):
    library.add_remote("big", "http://gpu:8000/v1", model_id="qwen", api_key_env="BIG_KEY")
    entry = library.read_library().models["big"]
    assert (entry.remote.base_url, entry.remote.model, entry.remote.api_key_env) == ("http://gpu:8000/v1", "qwen",
                                                                                    "BIG_KEY")
    with pytest.raises(llmos.ConfigError, match="base_url"):
        library.add_remote("bad", "gpu:8000")
    (llmos_home / "models.toml").write_text('[models.toml-model]\nbase_url = "http://x/v1"\n')
    with pytest.raises(llmos.ConfigError, match="models.toml"):
        library.add_remote("toml-model", "http://y/v1")


# -- loading -------------------------------------------------------------------------------------------------
def test_a_derived_model_wraps_its_base_with_the_nearest_settings(llmos_home):
    library.create("pirate", "smollm2", system="Arr.", params={"temperature": 0.5, "max_tokens": 9})
    library.create("pirate-cold", "pirate", params={"temperature": 0.0})
    base = FakeDriver(name="smollm2")
    name, entry = library.lookup("pirate-cold", llmos_home)
    driver = library.load(name, entry, llmos_home, lambda wanted: base if wanted == "smollm2" else None)
    assert isinstance(driver, DerivedDriver) and driver.base is base and driver.name == "pirate-cold"
    assert (driver.system, driver.sampling) == ("Arr.", {"temperature": 0.0, "max_tokens": 9})


def test_a_bad_adapter_fails_before_its_base_loads(tmp_path, monkeypatch):
    (tmp_path / "adapter_config.json").write_text("{}")
    library.create("tuned", "smollm2", adapter=tmp_path)
    monkeypatch.setattr(booting.drivers, "load_driver", lambda *a: pytest.fail("the base was loaded"))
    with pytest.raises(llmos.ConfigError, match="adapter_config.json: not a LoRA adapter config"):
        llmos.load_model("tuned")


def test_a_missing_folder_is_an_error_naming_the_entry(tmp_path):
    folder = library_folder(tmp_path / "m")
    library.import_path(folder, "mine")
    (folder / "config.json").unlink()
    with pytest.raises(llmos.ModelUnavailable, match="library model 'mine'.*is gone"):
        llmos.load_model("mine")


def test_unknown_names_list_the_librarys_too(tmp_path):
    library.import_path(library_folder(tmp_path / "m"), "mine")
    with pytest.raises(llmos.UnknownModel, match="in the library: mine"):
        llmos.load_model("gpt-3")


# -- on the real model ---------------------------------------------------------------------------------------
@pytest.mark.model
def test_a_derived_model_of_an_imported_folder_runs_with_its_system_prompt(smollm2, session_llmos_home):
    """Import the suite's cached SmolLM2 folder under a new name, derive a model with a system
    prompt and greedy defaults, load it: its prompts carry the system prompt (decoded from
    the tokens the real tokenizer gives), and its greedy reply is the base model's with that
    system message given by hand."""
    system = "You are a pirate. Always answer like a pirate."
    library.import_path(session_llmos_home / "models" / "smollm2", "smol-import")
    library.create("smol-pirate", "smol-import", system=system, params={"temperature": 0, "max_tokens": 12})
    try:
        pirate = llmos.load_model("smol-pirate")
        assert pirate.name == "smol-pirate"
        ids = pirate.driver.tokenize([ChatMessage(role="user", content="Where is the gold?")])
        assert f"<|im_start|>system\n{system}<|im_end|>" in pirate.driver.tokenizer.decode(ids)
        reply = pirate.chat("Where is the gold?")  # no max_tokens, no temperature: the derived defaults
        assert reply and reply == smollm2.chat("Where is the gold?", system=system, max_tokens=12, temperature=0)
    finally:
        library.remove("smol-pirate")
        library.remove("smol-import")
    assert (session_llmos_home / "models" / "smollm2" / "model.safetensors").is_file()  # a folder is never deleted
