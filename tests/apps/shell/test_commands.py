"""The shell's commands, driven through `Shell.execute` on a kernel with the fake driver."""

from __future__ import annotations

import io
from contextlib import asynccontextmanager

import anyio
import pytest
from rich.console import Console

import llmos
from llmos.apps.shell import views
from llmos.apps.shell.session import SHELL_CAPS, Shell
from llmos.testing import FakeDriver, until


async def sleeper(sys, seconds="30"):  # noqa: ANN001, ANN201
    await sys.sleep(float(seconds))
    return "rested"


async def busy(sys):  # noqa: ANN001, ANN201
    await sys.write("working\n")
    return "done"


async def eager(sys):  # noqa: ANN001, ANN201
    await sys.write("at once\n")  # its very first act, before the shell's spawn call has returned
    return await sys.ask_user("and?")


@pytest.fixture
async def shell():
    async with llmos.boot(FakeDriver(), memory=None) as kernel:
        async with running_shell(kernel) as sh:
            yield sh


@asynccontextmanager
async def running_shell(kernel, caps=SHELL_CAPS):  # noqa: ANN001, ANN201
    """The shell as the process it is (pid 1 on a fresh kernel), without the prompt loop:
    the test drives `execute` on the shell process's syscall handle."""
    sh = Shell("fake", out=Console(file=io.StringIO(), width=200))
    kernel.console = sh.console(lambda: {p.pid: p.ppid for p in kernel.ps(include_ended=True)})
    started, stop = anyio.Event(), anyio.Event()

    async def serve(sys):  # noqa: ANN001
        async with sh.session(sys):
            started.set()
            await stop.wait()

    info = await kernel.spawn(serve, name="shell", caps=caps)
    await started.wait()
    try:
        yield sh
    finally:
        stop.set()
        await kernel.wait(info.pid, timeout=5)


def said(sh: Shell) -> str:
    text = sh.out.file.getvalue()
    sh.out.file.seek(0)
    sh.out.file.truncate()
    return text


SLEEPER = f"{__file__}:sleeper"


async def caps_of(sys):  # noqa: ANN001, ANN201
    me = next(info for info in await sys.ps() if info.pid == sys.pid)
    return sorted(c for c in me.capabilities if c not in llmos.syscalls.DEFAULT_APP_CAPS)


async def test_run_allow_grants_a_job_more_than_the_defaults(shell):
    await shell.execute(f"run {__file__}:caps_of")
    assert said(shell) == "[]\n"
    await shell.execute(f"run --allow tool.run_python --allow net {__file__}:caps_of")
    assert said(shell) == "['net', 'tool.run_python']\n"
    await shell.execute(f"run --allow proc.nonsense {__file__}:caps_of")  # not the shell's to give: not given
    assert said(shell) == "[]\n"


async def test_run_in_the_foreground_streams_the_output(shell, capsys):
    assert await shell.execute("run generate 'The world is'")
    assert capsys.readouterr().out == "echo: The world is\n"


async def test_a_result_is_printed_when_nothing_was_written(shell):
    await shell.execute(f"run {SLEEPER} 0")
    assert said(shell) == "rested\n"


async def test_a_result_is_printed_after_what_the_job_wrote(shell, capsys):
    await shell.execute(f"run {__file__}:busy")
    assert capsys.readouterr().out == "working\n" and said(shell) == "done\n"


async def test_jobs_are_numbered_from_1_again_once_the_table_is_empty(shell):
    await shell.execute(f"run {SLEEPER} 0")  # a foreground job, over and reported
    shell.report_finished()  # as the prompt loop does before each prompt
    said(shell)
    await shell.execute(f"run {SLEEPER} 30 &")
    assert said(shell).strip() == "[1] 3"
    await shell.execute(f"run {SLEEPER} 30 &")
    assert said(shell).strip() == "[2] 4"


async def test_background_job_ps_kill_and_its_notice(shell):
    await shell.execute(f"run {SLEEPER} 30 &")
    assert said(shell).strip() == "[1] 2"  # pid 1 is the shell
    await shell.execute("ps")
    assert "sleeper" in said(shell)
    await shell.execute("jobs")
    listed = said(shell)
    assert "Running" in listed and "test_commands.py:sleeper 30 &" in listed and "& &" not in listed
    await shell.execute("kill %1")
    assert said(shell) == "killed 2\n"
    await until(lambda: shell.jobs.jobs[1].status is not None)
    shell.report_finished()
    assert "[1]  Killed" in said(shell) and shell.jobs.jobs == {}


async def test_suspend_resume_nice_wait_and_trace(shell):
    await shell.execute(f"run {SLEEPER} 0.2 &")
    await shell.execute("suspend 2")
    assert await job_state(shell, 2) == ("SUSPENDED", 0)
    await shell.execute("nice 2 5")
    await shell.execute("resume %1")
    assert await job_state(shell, 2) == ("RUNNING", 5)
    said(shell)
    await shell.execute("wait %1")
    assert "[1]  Done" in said(shell)
    await shell.execute("trace 2")
    assert "sleep" in said(shell)


async def job_state(sh: Shell, pid: int) -> tuple[str, int]:
    [proc] = [p for p in await sh.sys.ps() if p.pid == pid]
    return proc.state.name if proc.state.name != "BLOCKED" else "RUNNING", proc.priority


async def test_what_the_shell_does_is_its_own_syscalls_in_the_trace(shell):
    await shell.execute(f"run {SLEEPER} 30 &")
    await shell.execute("ps")
    await shell.execute("kill 2")
    said(shell)
    await shell.execute("trace 1")
    calls = said(shell)
    assert all(call in calls for call in ("spawn", "ps", "kill"))


async def test_the_shell_acts_only_within_its_capabilities():
    async def stranger(sys):  # noqa: ANN001
        await sys.sleep(30)

    async with llmos.boot(FakeDriver(), memory=None) as kernel:
        other = await kernel.spawn(stranger)  # not the shell's child
        async with running_shell(kernel, caps=SHELL_CAPS - {"proc.admin"}) as sh:
            await sh.execute(f"kill {other.pid}")
            assert said(sh).startswith("error: [EPERM]")
            await sh.execute(f"run {SLEEPER} 30 &")
            said(sh)
            await sh.execute("kill %1")  # its own job: no admin needed
            assert said(sh).startswith("killed")
        kernel.kill(other.pid)


async def test_a_job_s_first_write_and_question_already_belong_to_the_job(shell, capsys):
    await shell.execute(f"run {__file__}:eager &")
    job = shell.jobs.jobs[1]
    await until(lambda: bool(shell.notices))  # it asked from the background: the shell says so
    assert job.output == ["at once\n"] and capsys.readouterr().out == ""
    assert "is waiting for input" in shell.notices[0]


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
    ("run", "error: usage: run [--allow CAP]... APP"),
    ("run translate", "error: [EINVAL] missing a required argument: 'text'"),
    ("run no_such_app", "error: [EINVAL] cannot import app module 'no_such_app'"),
    ("fg", "error: no current job"),
    ("nice 1", "error: usage: nice PID|%N PRIORITY"),
    ("mem ls", "error: mem ls is not available yet"),
    ("mem", "error: usage: mem search QUERY"),
    ("mem add hello --namespace notes", "error: usage: mem search QUERY"),  # the option is --ns
    ("run translate 'unclosed", "error: cannot parse the line"),
    ("chat --model gpt-9", "error: this session runs fake"),
])
async def test_errors_are_one_line(shell, line, message):
    assert await shell.execute(line)
    text = said(shell)
    assert text.startswith(message) and text.count("\n") == 1, text


async def test_an_unexpected_error_is_one_line_too(shell, monkeypatch):
    monkeypatch.setattr(views, "ps_table", lambda *args: 1 / 0)
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
        async with running_shell(kernel) as sh:
            await sh.execute("mem add 'The ficus is watered on Mondays.'")
            await sh.execute("mem search 'when is the plant watered?'")
    out = capsys.readouterr().out
    assert "remembered as" in out and "in 'shell'" in out
    assert "The ficus is watered on Mondays." in out.splitlines()[-1]


async def test_mem_takes_unquoted_words_as_one_text_wherever_the_namespace_stands(tmp_path, capsys):
    async with llmos.boot(FakeDriver(), memory=tmp_path / "store") as kernel:
        async with running_shell(kernel) as sh:
            await sh.execute("mem add --ns notes The ficus is watered by Maria.")
            await sh.execute("mem add Paris is in France.")
            await sh.execute("mem search who waters the ficus --ns notes")
            found_in_notes = capsys.readouterr().out
            await sh.execute("mem search capital France")
            found_in_shell = capsys.readouterr().out
    assert "in 'notes'" in found_in_notes and "The ficus is watered by Maria." in found_in_notes
    assert "Paris is in France." in found_in_shell and "nothing in namespace" not in found_in_shell


async def test_tools_lists_what_processes_may_call_or_says_why_not(shell, capsys):
    await shell.execute("tools")
    out = capsys.readouterr().out
    assert out.strip() and "error" not in said(shell)
