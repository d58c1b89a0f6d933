"""The `llmos` command, run as a user runs it: a subprocess, with real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def llmos(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmos.apps.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def write_app(folder: Path, body: str) -> str:
    path = folder / "app.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.model
def test_run_an_app_on_the_real_model(tmp_path):
    app = write_app(tmp_path, """
        from llmos import Sys

        async def main(sys: Sys, question: str) -> str:
            reply = await sys.chat(question)
            return reply.text
    """)
    done = llmos("run", f"{app}:main", "What is the capital of France?")
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout


def test_a_failing_app_exits_1_with_its_reason(tmp_path):
    app = write_app(tmp_path, """
        async def main(sys, n):
            raise ValueError(f"bad input {n}")
    """)
    done = llmos("run", "--no-model", app, "7")
    assert done.returncode == 1
    assert "FAILED" in done.stderr and "ValueError: bad input 7" in done.stderr


def test_the_result_is_printed_after_what_the_app_wrote_and_asked(tmp_path):
    app = write_app(tmp_path, """
        async def main(sys):
            await sys.write("working on it")
            name = await sys.ask_user("Your name? ")
            return f"hello {name}"
    """)
    done = subprocess.run([sys.executable, "-m", "llmos.apps.cli", "run", "--no-model", app], input="Bob\n",
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "working on itYour name? \nhello Bob\n"


def test_a_reply_the_app_streamed_and_returned_is_printed_once(tmp_path):
    app = write_app(tmp_path, """
        async def main(sys):
            for piece in ("The sea ", "is ", "wide."):
                await sys.write(piece)
            await sys.write("\\n")
            return "The sea is wide."
    """)
    done = llmos("run", "--no-model", app)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "The sea is wide.\n"


def test_an_app_past_its_deadline_is_killed_with_137(tmp_path):
    app = write_app(tmp_path, """
        async def main(sys):
            await sys.sleep(30)
    """)
    done = llmos("run", "--no-model", "--deadline", "0.5", app)
    assert done.returncode == 137
    assert "KILLED" in done.stderr and "deadline" in done.stderr


def test_an_app_that_does_not_exist_is_a_clear_error(tmp_path):
    done = llmos("run", "--no-model", str(tmp_path / "missing.py"))
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_an_unknown_model_lists_the_known_ones(tmp_path):
    app = write_app(tmp_path, "async def main(sys):\n    return 1\n")
    done = llmos("run", "--model", "gpt-3", app)
    assert done.returncode == 1 and "smollm2" in done.stderr


def test_capabilities_can_be_narrowed(tmp_path):
    app = write_app(tmp_path, """
        from llmos.syscalls import PermissionDenied

        async def child(sys):
            return 1

        async def main(sys):
            try:
                await sys.spawn(child)
            except PermissionDenied as err:
                return f"denied {err.code.name}"
    """)
    done = llmos("run", "--no-model", "--cap", "ipc", app)
    assert done.returncode == 0 and "denied EPERM" in done.stdout


def test_run_python_needs_allow_and_the_refusal_is_in_the_audit_log(tmp_path):
    app = write_app(tmp_path, """
        from llmos.syscalls import PermissionDenied

        async def main(sys):
            try:
                return (await sys.call_tool("run_python", code="6 * 7"))["result"]
            except PermissionDenied as err:
                return f"denied {err.code.name}"
    """)
    assert "denied EPERM" in llmos("run", "--no-model", app).stdout  # not among the defaults
    allowed = llmos("run", "--no-model", "--allow", "tool.run_python", app)
    assert allowed.returncode == 0 and "42" in allowed.stdout, allowed.stderr
    audit = llmos("audit", "--denied")
    assert audit.returncode == 0 and "tool.run_python" in audit.stdout and "EPERM" in audit.stdout
    entries = llmos("audit", "--json").stdout.splitlines()
    assert [json.loads(line)["outcome"] for line in entries] == ["EPERM", "ok"]  # the allowed call: side effects


def test_models_lists_the_default_model():
    done = llmos("models")
    assert done.returncode == 0 and "smollm2" in done.stdout


def test_apps_lists_the_registered_apps():
    done = llmos("apps")
    assert done.returncode == 0 and all(name in done.stdout for name in ("translate", "qa", "workflow"))


def test_a_registered_app_with_wrong_arguments_is_a_usage_line():
    done = llmos("run", "--no-model", "translate")
    assert done.returncode == 1 and "usage: translate TEXT [--target-lang EN]" in done.stderr
    assert "Traceback" not in done.stderr


def test_words_after_the_app_are_the_apps_own(tmp_path):
    app = write_app(tmp_path, """
        async def main(sys, *words, max_tokens=None, deadline=None):
            return f"{words} {max_tokens} {deadline}"
    """)
    done = llmos("run", "--no-model", app, "a", "--max-tokens", "5", "--deadline=2", "b")
    assert done.returncode == 0 and done.stdout.strip() == "('a', 'b') 5 2"


@pytest.mark.model
def test_a_workflow_asks_on_stdin_and_stops_when_told(tmp_path):
    done = subprocess.run([sys.executable, "-m", "llmos.apps.cli", "run", "workflow", "story", "a cat",
                           "--max-tokens", "12"], input="no\n", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[outliner] ") and "Write the story from this outline?" in done.stdout
    assert "[writer]" not in done.stdout


@pytest.mark.parametrize(("args", "option"), [(("--quant", "int3"), "--quant"),
                                              (("--kv-cache-mb", "0"), "--kv-cache-mb"),
                                              (("--kv-cache-mb", "-5"), "--kv-cache-mb")])
def test_a_bad_model_setting_is_refused_before_the_command_runs(args, option):
    done = llmos(*args, "apps")  # `apps` loads no model: the option itself is checked
    assert done.returncode == 2
    assert option in done.stderr and not done.stdout


def test_the_quantization_option_is_read_in_any_case(monkeypatch):
    from llmos.apps.cli import app
    from typer.testing import CliRunner

    monkeypatch.delenv("LLMOS_QUANT", raising=False)
    result = CliRunner().invoke(app, ["--quant", "INT8", "apps"])
    assert result.exit_code == 0, result.output
    assert os.environ.pop("LLMOS_QUANT") == "int8"
