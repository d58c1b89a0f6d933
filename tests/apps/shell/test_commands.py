"""The shell's commands, driven through `Shell.execute` on a kernel with the fake driver."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import llmos
from llmos.apps.shell.session import Shell
from llmos.testing import FakeDriver, until


async def sleeper(sys, seconds="30"):  # noqa: ANN001, ANN201
    await sys.sleep(float(seconds))
    return "rested"


@pytest.fixture
async def shell(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))
    async with llmos.boot(FakeDriver(), memory=None) as kernel:
        sh = Shell(kernel, "fake", out=Console(file=io.StringIO(), width=200))
        async with _running(sh):
            yield sh


class _running:
    """Gives the shell its task group without the prompt loop."""

    def __init__(self, sh: Shell) -> None:
        import anyio

        self.sh, self.tg = sh, anyio.create_task_group()

    async def __aenter__(self) -> Shell:
        self.sh._tg = await self.tg.__aenter__()
        return self.sh

    async def __aexit__(self, *exc: object) -> None:
        self.tg.cancel_scope.cancel()
        await self.tg.__aexit__(None, None, None)


def said(sh: Shell) -> str:
    text = sh.out.file.getvalue()
    sh.out.file.seek(0)
    sh.out.file.truncate()
    return text


SLEEPER = f"{__file__}:sleeper"


async def test_run_in_the_foreground_streams_the_output(shell, capsys):
    assert await shell.execute("run generate 'The world is'")
    assert capsys.readouterr().out == "echo: The world is\n"


async def test_a_result_is_printed_when_nothing_was_written(shell):
    await shell.execute(f"run {SLEEPER} 0")
    assert said(shell) == "rested\n"


async def test_background_job_ps_kill_and_its_notice(shell):
    await shell.execute(f"run {SLEEPER} 30 &")
    assert said(shell).strip() == "[1] 1"
    await shell.execute("ps")
    assert "sleeper" in said(shell)
    await shell.execute("jobs")
    assert "Running" in said(shell)
    await shell.execute("kill %1")
    assert said(shell) == "killed 1\n"
    await until(lambda: shell.jobs.jobs[1].status is not None)
    shell.report_finished()
    assert "[1]  Killed" in said(shell) and shell.jobs.jobs == {}


async def test_suspend_resume_nice_wait_and_trace(shell):
    await shell.execute(f"run {SLEEPER} 0.2 &")
    await shell.execute("suspend 1")
    assert shell.kernel.ps()[0].state.name == "SUSPENDED"
    await shell.execute("nice 1 5")
    await shell.execute("resume %1")
    assert shell.kernel.ps()[0].priority == 5
    said(shell)
    await shell.execute("wait %1")
    assert "[1]  Done" in said(shell)
    await shell.execute("trace 1")
    assert "sleep" in said(shell)


async def test_fg_shows_the_kept_output_then_the_end(shell, capsys):
    await shell.execute("run translate 你好 &")
    await until(lambda: shell.jobs.jobs[1].status is not None)
    await shell.execute("fg %1")
    assert "has already ended" in said(shell)
    shell.report_finished()
    assert capsys.readouterr().out.startswith("echo:")


@pytest.mark.parametrize(("line", "message"), [
    ("bogus", "error: unknown command 'bogus'"),
    ("kill 999", "error: [ESRCH] no process with pid 999"),
    ("kill", "error: which process?"),
    ("run", "error: usage: run APP"),
    ("run translate", "error: [EINVAL] missing a required argument: 'text'"),
    ("run no_such_app", "error: [EINVAL] cannot import app module 'no_such_app'"),
    ("fg", "error: no current job"),
    ("nice 1", "error: usage: nice PID|%N PRIORITY"),
    ("mem ls", "error: mem ls is not available yet"),
    ("mem", "error: usage: mem search QUERY"),
    ("run translate 'unclosed", "error: cannot parse the line"),
    ("chat --model gpt-9", "error: this session runs fake"),
])
async def test_errors_are_one_line(shell, line, message):
    assert await shell.execute(line)
    text = said(shell)
    assert text.startswith(message) and text.count("\n") == 1, text


async def test_an_unexpected_error_is_one_line_too(shell, monkeypatch):
    monkeypatch.setattr(shell.kernel, "ps", lambda **kw: 1 / 0)
    await shell.execute("ps")
    assert said(shell) == "error: ZeroDivisionError: division by zero (LLMOS_DEBUG=1 shows the traceback)\n"


async def test_help_apps_models_top_and_exit(shell):
    await shell.execute("help")
    assert "suspend" in said(shell)
    await shell.execute("apps")
    assert "translate" in said(shell)
    await shell.execute("models")
    assert "smollm2" in said(shell)
    await shell.execute("top -n 1")
    assert "batch 0" in said(shell)
    assert await shell.execute("exit") is False


async def test_mem_add_then_search_through_the_memory_syscalls(tmp_path, capsys):
    async with llmos.boot(FakeDriver(), memory=tmp_path / "store") as kernel:
        sh = Shell(kernel, "fake", out=Console(file=io.StringIO(), width=200))
        async with _running(sh):
            await sh.execute("mem add 'The ficus is watered on Mondays.'")
            await sh.execute("mem search 'when is the plant watered?'")
    out = capsys.readouterr().out
    assert "remembered as" in out and "in 'shell'" in out
    assert "The ficus is watered on Mondays." in out.splitlines()[-1]


async def test_tools_lists_what_processes_may_call_or_says_why_not(shell, capsys):
    await shell.execute("tools")
    out = capsys.readouterr().out
    assert out.strip() and "error" not in said(shell)
