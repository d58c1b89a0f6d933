"""The `llmos` command as the daemon's client: `run`, `ps`, `kill`, `logs`, `top` and `shell`
act on a running `llmos serve` (a real server on loopback) when one answers at LLMOS_URL."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from llmos.testing import FakeDriver, FakeLoader, served, until

CLI = [sys.executable, "-m", "llmos.apps.cli"]


async def llmos(url: str, *args: str, check: bool = False) -> anyio.abc.Process:
    """Run the command against the daemon at `url` without blocking the server's event loop."""
    with anyio.fail_after(60):
        return await anyio.run_process([*CLI, *args], env={**os.environ, "LLMOS_URL": url}, check=check)


def out(result) -> str:
    return result.stdout.decode()


async def test_run_starts_the_app_in_the_daemon_and_shows_its_output():
    driver = FakeDriver(lambda prompt: "a warm daemon answers")
    async with served(driver) as srv:
        result = await llmos(srv.url, "run", "generate", "hello", "--max-tokens", "8")
        assert result.returncode == 0, result.stderr.decode()
        assert out(result).strip() == "a warm daemon answers"
        assert [job.sampling.max_tokens for job in driver.jobs] == [8]  # --max-tokens reached the app
        assert any(e.call == "generate" and e.outcome == "ok" for e in srv.kernel.trace)  # it ran there


async def test_run_reports_a_failure_and_exit_code_as_locally(tmp_path: Path):
    app = tmp_path / "fails.py"
    app.write_text("async def main(sys):\n    raise ValueError('no luck')\n")
    async with served() as srv:
        result = await llmos(srv.url, "run", f"{app}:main")
    assert result.returncode == 1
    assert "ValueError: no luck" in result.stderr.decode()


async def test_a_wrong_model_or_bad_arguments_are_refused_before_anything_runs():
    async with served() as srv:
        model = await llmos(srv.url, "run", "-m", "gemma3", "generate", "hi")
        usage = await llmos(srv.url, "run", "translate")
        assert [p.name for p in srv.kernel.ps(include_ended=True)] == ["llmosd"]
    assert model.returncode == 1 and "no model named 'gemma3'" in model.stderr.decode()
    assert usage.returncode == 1 and "text" in usage.stderr.decode()


async def test_options_that_shape_a_kernel_here_are_refused_where_the_daemon_runs_the_app():
    async with served() as srv:
        no_model = await llmos(srv.url, "run", "--no-model", "generate", "hi")
        policy = await llmos(srv.url, "run", "--policy", "rr", "--durable", "generate", "hi")
        assert [p.name for p in srv.kernel.ps(include_ended=True)] == ["llmosd"]
    for result, option in ((no_model, "--no-model"), (policy, "--policy rr")):
        assert result.returncode == 2, result.stderr.decode()
        error = " ".join(result.stderr.decode().replace("│", " ").split())  # rich boxes and wraps it
        assert f"{option} shape a kernel this command boots" in error and "--local" in error


async def test_a_file_named_relative_to_where_llmos_runs_is_the_one_the_daemon_reads(tmp_path: Path):
    (tmp_path / "reader.py").write_text("async def main(sys, file):\n    return open(file).read()\n")
    (tmp_path / "notes.txt").write_text("the ficus wants water")
    async with served() as srv:  # the daemon's working folder is not tmp_path
        with anyio.fail_after(60):
            result = await anyio.run_process([*CLI, "run", "reader.py:main", "--file", "notes.txt"], cwd=tmp_path,
                                             env={**os.environ, "LLMOS_URL": srv.url}, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert out(result).strip() == "the ficus wants water"


async def test_ps_kill_and_logs_act_on_the_daemons_processes(tmp_path: Path):
    app = tmp_path / "talker.py"
    app.write_text("async def main(sys):\n    await sys.write('hello from the daemon\\n')\n    await sys.sleep(60)\n")
    async with served() as srv:
        proc = await srv.kernel.spawn(f"{app}:main", name="talker")
        await until(lambda: srv.kernel.console.written(proc.pid) != "", timeout=5)
        listing = await llmos(srv.url, "ps")
        logs = await llmos(srv.url, "logs", str(proc.pid))
        killed = await llmos(srv.url, "kill", str(proc.pid), "--reason", "enough")
        await until(lambda: srv.kernel.procs.get(proc.pid).state.terminal, timeout=5)
        assert srv.kernel.procs.get(proc.pid).reason == "enough"
        followed = await llmos(srv.url, "logs", "-f", str(proc.pid))
    assert "talker" in out(listing) and "llmosd" in out(listing)
    assert out(logs) == "hello from the daemon\n"
    assert killed.returncode == 0
    assert "hello from the daemon" in out(followed) and followed.returncode == 137


async def test_top_shows_the_engine_and_processes():
    async with served() as srv:
        result = await llmos(srv.url, "top", "-n", "1")
    assert result.returncode == 0
    assert "llmos top" in out(result) and "llmosd" in out(result) and "batch 0" in out(result)


async def test_run_remote_runs_the_app_here_with_its_syscalls_in_the_daemon(tmp_path: Path):
    app = tmp_path / "here.py"
    app.write_text("import os\n\nasync def main(sys, who):\n"
                   "    reply = await sys.chat(who)\n"
                   "    return f'{os.getpid()} {sys.pid} {reply.text}'\n")
    async with served() as srv:
        result = await llmos(srv.url, "run", "--remote", srv.url, f"{app}:main", "you")
        session = next(e.pid for e in srv.kernel.trace if e.call == "chat")
    local_pid, remote_pid, text = out(result).split(" ", 2)
    assert result.returncode == 0
    assert int(local_pid) != os.getpid()  # it ran in the command's own process...
    assert int(remote_pid) == session  # ...as a process of the daemon's kernel
    assert text.strip() == "echo: you"


def test_without_a_daemon_ps_says_how_to_start_one():
    import subprocess

    result = subprocess.run([*CLI, "ps"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no llmos daemon answers at http://127.0.0.1:9" in result.stderr and "llmos serve" in result.stderr


@pytest.mark.model
def test_the_shell_runs_as_a_process_of_the_daemon(smollm2_server: str):
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "TERM": "dumb", "PROMPT_TOOLKIT_NO_CPR": "1", "LLMOS_URL": smollm2_server}
    shell = pexpect.spawn(CLI[0], [*CLI[1:], "shell"], env=env, encoding="utf-8", timeout=60)
    try:
        shell.expect("llmos shell on smollm2")
        shell.expect("llmos> ")
        shell.sendline("ps")
        shell.expect(r"(\d+)\s+│\s+1\s+│\s+shell\s+│\s+RUNNING")  # a child of llmosd (pid 1)
        shell.expect("llmos> ")
        shell.sendline("run generate 'The capital of France is' --max-tokens 4")
        shell.expect("llmos> ")
        assert "Paris" in shell.before
        shell.sendline("exit")
        shell.expect("bye")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)


async def test_a_durable_run_generates_with_the_model_it_names(tmp_path: Path):
    app = tmp_path / "asker.py"
    app.write_text("async def main(sys):\n    return (await sys.chat('hello', max_tokens=8)).model\n")
    async with served(FakeDriver(name="base")) as srv:
        srv.kernel.models.loader = FakeLoader()  # it may load "other" beside "base"
        result = await llmos(srv.url, "run", "--durable", "--model", "other", f"{app}:main")
        unknown = await llmos(srv.url, "run", "--durable", "--model", "no-such", f"{app}:main")
    assert result.returncode == 0, result.stderr.decode()
    assert out(result).strip() == "other"
    assert unknown.returncode != 0 and "no-such" in unknown.stderr.decode()
