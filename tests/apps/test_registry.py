"""The app registry: names `llmos run` knows, and command-line words bound to an app's parameters."""

from __future__ import annotations

import pytest

from llmos.apps import registry
from llmos.syscalls import InvalidRequest
from llmos.testing import result, run_app


async def greet(sys, name, greeting="hello", loud=False):  # noqa: ANN001, ANN201
    text = f"{greeting} {name}"
    return text.upper() if loud else text


@pytest.fixture
def greeter():
    registry.register("greet", greet, "say hello")
    try:
        yield
    finally:
        registry.APPS.pop("greet")


def test_the_seed_apps_are_registered():
    assert {"generate", "chat", "translate", "summarize", "codegen", "qa", "workflow"} <= set(registry.APPS)


@pytest.mark.parametrize(("argv", "args", "options"), [
    (["a", "b"], ["a", "b"], {}),
    (["--target-lang", "fr", "text"], ["text"], {"target_lang": "fr"}),
    (["text", "--target-lang=fr"], ["text"], {"target_lang": "fr"}),
    (["x", "--loud"], ["x"], {"loud": True}),
    (["--loud", "--docs", "d", "q"], ["q"], {"loud": True, "docs": "d"}),
    (["--", "--not-an-option", "-5"], ["--not-an-option", "-5"], {}),
])
def test_parse_argv(argv, args, options):
    assert registry.parse_argv(argv) == (args, options)


def test_for_another_process_option_values_naming_files_here_are_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    args, options = registry.parse_argv_portable(["notes.txt", "--file", "notes.txt", "--docs=notes",
                                                  "--lang", "fr", "--loud", "--other", "/abs/missing"])
    assert args == ["notes.txt"]  # a positional word is text as often as a path: left alone
    assert options == {"file": str(tmp_path / "notes.txt"), "docs": str(tmp_path / "notes"), "lang": "fr",
                       "loud": True, "other": "/abs/missing"}


async def test_a_registered_app_runs_by_name_with_options(greeter):
    assert result(await run_app("greet", "llmos", greeting="hi", loud=True)) == "HI LLMOS"


def test_a_wrong_call_is_a_usage_error(greeter):
    with pytest.raises(InvalidRequest) as err:
        registry.bind("greet", [], {"colour": "red"})
    assert "usage: greet NAME [--greeting HELLO] [--loud FALSE]" in str(err.value)


def test_an_unknown_name_is_treated_as_a_reference():
    with pytest.raises(InvalidRequest, match="cannot import app module 'no_such_app'"):
        registry.bind("no_such_app", [], {})
