"""`llmos eval` through typer's CliRunner, its models FakeDrivers (loading by name is replaced)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmos import booting
from llmos.apps.cli import app
from llmos.testing import FakeDriver

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "eval"


def llmos_eval(*args: str):  # noqa: ANN201
    return runner.invoke(app, ["eval", *args], env={"COLUMNS": "200"})


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loaded: list[str] = []

    def load_driver(name: str, dtype: str | None = None, quant: str | None = None) -> FakeDriver:
        loaded.append(name)
        return FakeDriver(lambda prompt: "Paris is the capital." if "France" in prompt else "I do not know.",
                          name=f"fake-{name}")

    monkeypatch.setattr(booting, "load_driver", load_driver)
    return loaded


def test_two_models_side_by_side_in_tables_and_json(fake_models, tmp_path, llmos_home):
    out = tmp_path / "out.json"
    done = llmos_eval("--qa", str(EXAMPLES / "qa.jsonl"), "--perplexity", str(EXAMPLES / "text.txt"),
                      "--models", "base,tuned", "--limit", "3", "--json", str(out), "--compare-loop")
    assert done.exit_code == 0, done.output
    assert fake_models == ["base", "tuned"]
    for words in ("perplexity", "contains answer", "examples/s (kernel)", "examples/s (sequential loop)", "base",
                  "tuned"):
        assert words in done.output
    report = json.loads(out.read_text())
    assert [m["model"] for m in report["models"]] == ["base", "tuned"]
    assert report["models"][0]["qa"]["contains"] == pytest.approx(1 / 3)  # only the France question
    assert len(report["models"][0]["qa"]["items"]) == 3 and report["inputs"]["qa"].endswith("qa.jsonl")


def test_results_go_to_llmos_home_by_default(fake_models, llmos_home):
    done = llmos_eval("--qa", str(EXAMPLES / "qa.jsonl"), "--limit", "1")
    assert done.exit_code == 0, done.output
    assert fake_models == ["smollm2"]  # the library's default
    [written] = (llmos_home / "evals").glob("eval-*.json")
    assert str(written) in done.output.replace("\n", "")


def test_mistakes_are_one_line_errors_before_any_model_loads(fake_models, tmp_path):
    done = llmos_eval()
    assert done.exit_code == 1 and "error: nothing to evaluate" in done.output
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"question": "Q?", "answer": "yes"}\n{"question": "Q?"}\n')
    done = llmos_eval("--qa", str(bad))
    assert done.exit_code == 1 and f"{bad}:2: answers: Field required" in done.output.replace("\n", "")
    assert "Traceback" not in done.output and fake_models == []
