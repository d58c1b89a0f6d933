"""Workflow files: checked on load, run with `llmos run workflow FILE [INPUT]`."""

from __future__ import annotations

import pytest

from llmos.apps.workflows import spec
from llmos.apps.workflows.agent import WorkflowError
from llmos.syscalls import ProcState
from llmos.testing import FakeDriver, ScriptedConsole, result, run_app


def test_the_examples_load():
    assert {spec.load(name).pattern for name in spec.examples()} == {"pipeline", "supervisor", "debate", "mapreduce"}


def test_yaml_works_too(tmp_path):
    (tmp_path / "w.yaml").write_text("pattern: pipeline\nsteps:\n  - name: a\n    prompt: 'A {input}'\n")
    assert spec.load(tmp_path / "w.yaml").steps == [{"name": "a", "prompt": "A {input}"}]


@pytest.mark.parametrize(("text", "message"), [
    ('pattern = "debate"\n[writer]\nname = "w"\n', "a debate workflow needs critic"),
    ('pattern = "chain"\n', "pattern"),
    ('pattern = "pipeline"\n[[steps]]\nnam = "x"\n', "nam"),
    ("pattern = ", "is not valid TOML"),
])
def test_a_bad_file_is_one_clear_error(tmp_path, text, message):
    (tmp_path / "w.toml").write_text(text)
    with pytest.raises(WorkflowError, match=message):
        spec.load(tmp_path / "w.toml")


def test_a_missing_file_names_the_examples():
    with pytest.raises(WorkflowError, match="does not exist.*story"):
        spec.load("nope.toml")


async def test_run_workflow_by_name_with_an_input_override():
    console = ScriptedConsole("yes")
    out = result(await run_app("workflow", "story", "a cat", driver=FakeDriver(), console=console, max_tokens=40))
    assert [s["step"] for s in out["steps"]] == ["outliner", "writer"]
    assert "a cat" in out["steps"][0]["output"]


async def test_a_workflow_without_input_fails_clearly(tmp_path):
    (tmp_path / "w.toml").write_text('pattern = "pipeline"\n[[steps]]\nname = "a"\n')
    status = await run_app("workflow", str(tmp_path / "w.toml"))
    assert status.state is ProcState.FAILED and "has no input" in status.reason


@pytest.mark.model
@pytest.mark.parametrize("example", ["story", "helpdesk", "critique", "digest"])
async def test_every_example_runs_on_the_real_model(example, smollm2):
    console = ScriptedConsole("yes")
    out = result(await run_app("workflow", example, driver=smollm2.driver, console=console, max_tokens=12,
                               timeout=120))
    assert out["output"].strip() and console.text.startswith("[")
