"""LoRA fine-tuning (llmos.finetune): the run's settings, everything `prepare` checks before a
model loads (the new name, the base's folder, the data), and one real run on SmolLM2 (marked
`model`): the eval loss falls, the adapter is saved and registered, a cancelled run leaves
nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos import finetune, library
from llmos.drivers import registry
from llmos.drivers.errors import UnknownModel
from llmos.finetune import FinetuneSettings, TrainingCancelled
from llmos.finetune_data import FinetuneDataError
from llmos.kernel.errors import ConfigError

FACTS = [("What is the capital of Veltria?", "The capital of Veltria is Corvane."),
         ("Which city is Veltria's capital?", "Corvane is the capital of Veltria."),
         ("Name the capital of Veltria.", "Veltria's capital is Corvane."),
         ("What money is used in Veltria?", "Veltria uses the drell."),
         ("What is the currency of Veltria?", "The currency of Veltria is the drell."),
         ("Which currency does Veltria use?", "Veltria's currency is the drell."),
         ("Who founded Veltria?", "Queen Ilsabet founded Veltria."),
         ("Who was the founder of Veltria?", "Veltria was founded by Queen Ilsabet.")]


def facts_file(folder: Path) -> Path:
    # A short system turn: without one SmolLM2's template adds its own, twice as long as the rest.
    path = folder / "facts.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "Answer briefly."},
                                                     {"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in FACTS))
    return path


# -- the settings -------------------------------------------------------------------------------------------
def test_settings_from_a_command_line_are_converted_and_checked(tmp_path):
    job = finetune.job("smollm2", tmp_path / "d.jsonl", "new", steps="60", lr="1e-3", val_fraction="0")
    assert job.settings == FinetuneSettings(steps=60, lr=1e-3, val_fraction=0) and job.data.is_absolute()
    with pytest.raises(ConfigError, match="^--lr: Input should be greater than 0"):
        finetune.job("smollm2", "d.jsonl", "new", lr=0)
    with pytest.raises(ConfigError, match="^--val-fraction: Input should be less than 1"):
        finetune.job("smollm2", "d.jsonl", "new", val_fraction=1)
    with pytest.raises(ConfigError, match="^--learning-rate: Extra inputs are not permitted"):
        finetune.job("smollm2", "d.jsonl", "new", learning_rate=0.1)
    with pytest.raises(ConfigError, match="--steps or --epochs, not both"):
        finetune.job("smollm2", "d.jsonl", "new", steps=10, epochs=1)


@pytest.mark.parametrize(("settings", "examples", "steps"), [
    ({"steps": 7}, 100, 7), ({}, 10, 9), ({"epochs": 1}, 10, 3), ({"epochs": 0.5, "batch_size": 1}, 5, 3),
])
def test_total_steps_count_batches_as_the_trainer_does(settings, examples, steps):
    assert finetune.total_steps(FinetuneSettings(**settings), examples) == steps


# -- prepare: everything but the model ---------------------------------------------------------------------
def test_prepare_plans_the_run_from_an_alias_of_the_base(tmp_path, llmos_home):
    plan = finetune.prepare(finetune.job("SmolLM2-135M-Instruct", facts_file(tmp_path), "veltria", steps=20))
    assert plan.base == "smollm2" and plan.folder == llmos_home / "models" / "smollm2"
    assert (len(plan.train), len(plan.validation), plan.total_steps, plan.eval_every) == (7, 1, 20, 2)
    assert plan.target == llmos_home / "adapters" / "veltria"
    assert "8 examples (7 to train on, 1 held out" in plan.describe()


def test_bad_data_is_reported_before_any_model_loads(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "fine"}\n{"messages": [{"role": "user", "content": "Q?"}]}\n')
    with pytest.raises(FinetuneDataError, match=r"bad.jsonl:2: messages: Value error, no assistant turn"):
        finetune.prepare(finetune.job("smollm2", data, "new"))


def test_the_new_name_must_be_free_unless_forced_over_a_derived_model(tmp_path, llmos_home):
    data = facts_file(tmp_path)
    library.create("taken", "smollm2", system="Arr.")
    with pytest.raises(ConfigError, match="has a model named 'taken' already"):
        finetune.prepare(finetune.job("smollm2", data, "taken"))
    finetune.prepare(finetune.job("smollm2", data, "taken", force=True))
    with pytest.raises(ConfigError, match="built-in model's name"):
        finetune.prepare(finetune.job("smollm2", data, "smollm2", force=True))
    (llmos_home / "adapters" / "orphan").mkdir(parents=True)
    with pytest.raises(ConfigError, match="adapters/orphan exists .*--force replaces it"):
        finetune.prepare(finetune.job("smollm2", data, "orphan"))


def test_a_base_without_a_local_folder_is_refused_by_a_typed_error(tmp_path, llmos_home):
    data = facts_file(tmp_path)
    library.add_remote("faraway", "http://127.0.0.1:9/v1")
    library.create("pirate", "smollm2", system="Arr.")
    with pytest.raises(library.NoLocalFolder, match="remote model"):
        finetune.prepare(finetune.job("faraway", data, "new"))
    with pytest.raises(library.NoLocalFolder, match="remote model"):
        finetune.prepare(finetune.job("openai:http://127.0.0.1:9/v1#m", data, "new"))
    with pytest.raises(library.NoLocalFolder, match="derived model"):
        finetune.prepare(finetune.job("pirate", data, "new"))
    with pytest.raises(UnknownModel):
        finetune.prepare(finetune.job("nope", data, "new"))
    with pytest.raises(ConfigError, match="is a folder: import it first"):
        finetune.prepare(finetune.job(str(llmos_home / "models" / "smollm2"), data, "new"))


# -- the base's folder and the new entry (llmos.library) ---------------------------------------------------------
def test_local_folder_finds_registered_imported_and_path_models(llmos_home):
    cache = llmos_home / "models" / "smollm2"
    assert library.local_folder("smollm2") == cache
    library.import_path(cache, "mine")
    assert library.local_folder("mine") == cache.resolve()
    assert library.local_folder(str(cache)) == cache.resolve()


def test_local_folder_refuses_a_registered_model_without_a_gguf_source(monkeypatch):
    spec = registry.ModelSpec("opaque", "loads itself", load=lambda home: None)
    monkeypatch.setitem(registry._MODELS, "opaque", spec)
    with pytest.raises(library.NoLocalFolder, match="without a GGUF source"):
        library.local_folder("opaque")


def test_create_replaces_a_derived_model_only(tmp_path):
    library.create("tuned", "smollm2", system="old")
    library.create("tuned", "smollm2", system="new", replace=True)
    assert library.read_library().models["tuned"].system == "new"
    library.add_remote("faraway", "http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="has a model named 'faraway' already"):
        library.create("faraway", "smollm2", replace=True)


# -- a real run ----------------------------------------------------------------------------------------------
@pytest.mark.model
def test_a_short_run_lowers_the_eval_loss_and_registers_the_adapter_and_a_cancelled_one_nothing(
        tmp_path, llmos_home):
    data = facts_file(tmp_path)
    settings = {"steps": 6, "batch_size": 2, "max_length": 128, "lr": 1e-3, "val_fraction": 0.25, "eval_every": 3}
    reports: list[finetune.Progress] = []
    summary = finetune.train(finetune.prepare(finetune.job("smollm2", data, "veltria", **settings)), reports.append)

    assert summary.eval_loss is not None and summary.eval_loss.best < summary.eval_loss.first
    assert summary.eval_loss.last < summary.eval_loss.first and summary.steps == 6
    assert [r.step for r in reports if r.kind == "step"] == list(range(1, 7))
    assert [r.step for r in reports if r.kind == "eval"] == [0, 3, 6]  # before training, then every 3 steps
    folder = llmos_home / "adapters" / "veltria"
    assert {"adapter_config.json", "adapter_model.safetensors", "training_summary.json"} <= {p.name for p in
                                                                                             folder.iterdir()}
    assert finetune.read_summary(folder) == summary
    entry = library.read_library().models["veltria"]
    assert isinstance(entry, library.DerivedEntry) and (entry.base, entry.adapter) == ("smollm2", str(folder))

    def cancel_after_the_first_step(progress: finetune.Progress) -> None:
        if progress.kind == "step":
            cancelled.append(True)

    cancelled: list[bool] = []
    plan = finetune.prepare(finetune.job("smollm2", data, "cancelled", **settings))
    with pytest.raises(TrainingCancelled):
        finetune.train(plan, cancel_after_the_first_step, lambda: bool(cancelled))
    assert library.read_library().find("cancelled") is None
    assert sorted(p.name for p in (llmos_home / "adapters").iterdir()) == ["veltria"]  # no half-written folder
