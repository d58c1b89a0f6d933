"""Durable processes from the `llmos` command, run as a user runs it (subprocesses, real
exit codes, SIGKILL): `run --durable [--restart ...]`, `ps --durable`, `resume ID`,
`cancel ID`, and the next `llmos run` finishing what a killed one left.

Every test has its own LLMOS_HOME (tests/conftest.py), inherited by the commands, and
LLMOS_URL points at a closed port, so the commands boot a kernel in their own process
(`--local` says so too) unless a test serves a daemon and points them at it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from llmos.server.client import DaemonClient
from llmos.syscalls import DurableState, ProcState
from llmos.testing import FakeDriver, served

CLI = [sys.executable, "-m", "llmos.apps.cli"]
WIDE = {"COLUMNS": "250"}  # `ps --durable`'s table on one line per process, whatever the terminal

# Writes "step i" for each of `n` steps, pausing `pause` s after each (one syscall each).
STEPS = """
async def main(sys, n, pause="0", fail=""):
    for i in range(int(n)):
        await sys.write(f"step {i}\\n")
        await sys.sleep(float(pause))
    if fail:
        raise ValueError(f"failed after {n} steps")
    return f"counted to {n}"
"""

# An app that does nothing durable itself: running it boots a kernel on the same LLMOS_HOME.
OTHER = """
async def main(sys):
    return "other done"
"""

# Each run appends a line to `runs` (outside any syscall) and fails.
FAILER = """
async def main(sys, runs):
    with open(runs, "a") as out:
        out.write("run\\n")
    await sys.sleep(0)
    raise RuntimeError("boom")
"""


def write_app(folder: Path, name: str, source: str) -> str:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def llmos(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **WIDE, **env})


async def allmos(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """`llmos` without blocking the event loop (of a daemon served by the test)."""
    with anyio.fail_after(timeout):
        done = await anyio.run_process([*CLI, *args], env={**os.environ, **WIDE, **env}, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def durable_id_in(text: str) -> str:
    found = re.search(r"durable process ([0-9a-f]{12})", text)
    assert found, text
    return found.group(1)


def row(listing: str, durable_id: str) -> str:
    """The line of `ps --durable`'s table that shows `durable_id`."""
    lines = [line for line in listing.splitlines() if durable_id in line]
    assert len(lines) == 1, listing
    return lines[0]


def poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Killed:
    """A `llmos run --durable` killed with SIGKILL mid-run: its output and its durable id."""

    def __init__(self, stdout: str, stderr: str, code: int) -> None:
        self.stdout, self.stderr, self.code = stdout, stderr, code
        self.durable_id = durable_id_in(stderr)


def run_and_kill(tmp_path: Path, app: str, *args: str, after: str, settle: float = 0.15,
                 timeout: float = 60, sig: int = signal.SIGKILL) -> Killed:
    """Run `llmos run --durable --local --no-model APP ARGS` and SIGKILL it (or send it
    `sig`) once its output holds `after`, `settle` s later (the step after it has been
    recorded by then: the app pauses longer than that between steps)."""
    out, err = tmp_path / "killed.out", tmp_path / "killed.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        child = subprocess.Popen([*CLI, "run", "--durable", "--local", "--no-model", app, *args],
                                 stdout=stdout, stderr=stderr, env={**os.environ, **WIDE})
    try:
        poll(lambda: after in out.read_text() or child.poll() is not None, timeout, f"{after!r} in the output")
        assert child.poll() is None, f"it ended before it was killed:\n{out.read_text()}\n{err.read_text()}"
        time.sleep(settle)
        child.send_signal(sig)
        code = child.wait(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return Killed(out.read_text(), err.read_text(), code)


def step_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("step ")]


# -- running to the end --------------------------------------------------------------------------
def test_a_durable_run_ends_as_an_ordinary_run_does(tmp_path):
    app = write_app(tmp_path, "steps", STEPS)
    ordinary = llmos("run", "--local", "--no-model", app, "3")
    durable = llmos("run", "--durable", "--local", "--no-model", app, "3")
    failing = llmos("run", "--durable", "--local", "--no-model", app, "2", "--fail", "yes")
    returning = llmos("run", "--durable", "--local", "--no-model", app, "0")
    listing = llmos("ps", "--durable")

    assert ordinary.returncode == 0, ordinary.stderr
    assert durable.returncode == 0, durable.stderr
    assert durable.stdout == ordinary.stdout == "step 0\nstep 1\nstep 2\ncounted to 3\n"  # then its result
    done_id = durable_id_in(durable.stderr)
    assert failing.returncode == 1
    assert "FAILED" in failing.stderr and "ValueError: failed after 2 steps" in failing.stderr
    assert failing.stdout == "step 0\nstep 1\n"
    assert returning.returncode == 0 and returning.stdout == "counted to 0\n"  # nothing written: the result is

    assert listing.returncode == 0, listing.stderr
    assert re.search(r"\bexited\b", row(listing.stdout, done_id))
    assert re.search(r"\bfailed\b", row(listing.stdout, durable_id_in(failing.stderr)))
    assert len(re.findall(r"\b[0-9a-f]{12}\b", listing.stdout)) == 3
    # The next boot has nothing to resume.
    other = llmos("run", "--local", "--no-model", write_app(tmp_path, "other", OTHER))
    assert other.returncode == 0 and other.stdout == "other done\n"
    assert "resumed" not in other.stderr


def test_a_durable_run_of_an_app_that_cannot_start_is_a_clear_error(tmp_path):
    app = write_app(tmp_path, "steps", STEPS)
    missing = llmos("run", "--durable", "--local", "--no-model", str(tmp_path / "missing.py"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    arity = llmos("run", "--durable", "--local", "--no-model", app, "1", "2", "3", "4")
    assert arity.returncode == 1 and "error:" in arity.stderr and "Traceback" not in arity.stderr
    assert "durable process" not in arity.stderr  # nothing was started


# -- killed mid-run, finished by the next boot -------------------------------------------------------
def test_a_killed_durable_run_is_finished_by_the_next_boot_without_repeating_itself(tmp_path):
    app = write_app(tmp_path, "steps", STEPS)
    killed = run_and_kill(tmp_path, app, "5", "0.4", after="step 1\n")
    assert killed.code == -signal.SIGKILL
    assert step_lines(killed.stdout) == ["step 0", "step 1"]

    before = llmos("ps", "--durable")
    assert before.returncode == 0, before.stderr
    assert re.search(r"\bunfinished\b", row(before.stdout, killed.durable_id))

    nxt = llmos("run", "--no-model", "--local", write_app(tmp_path, "other", OTHER))
    assert nxt.returncode == 0, nxt.stderr
    assert f"resumed durable process {killed.durable_id}" in nxt.stderr
    assert "other done" in nxt.stdout
    both = step_lines(killed.stdout) + step_lines(nxt.stdout)
    assert sorted(both) == [f"step {i}" for i in range(5)]  # each step printed exactly once
    assert step_lines(nxt.stdout) == ["step 2", "step 3", "step 4"]

    after = llmos("ps", "--durable")
    line = row(after.stdout, killed.durable_id)
    assert re.search(r"\bexited\b", line) and re.search(r"\b10\b", line)  # 5 writes and 5 sleeps recorded


def test_ctrl_c_leaves_a_durable_run_unfinished_and_the_next_boot_finishes_it(tmp_path):
    app = write_app(tmp_path, "steps", STEPS)
    interrupted = run_and_kill(tmp_path, app, "4", "0.4", after="step 1\n", sig=signal.SIGINT)
    assert interrupted.code == 130, interrupted.stderr
    assert f"durable process {interrupted.durable_id} is unfinished" in interrupted.stderr
    assert "Traceback" not in interrupted.stderr
    assert step_lines(interrupted.stdout) == ["step 0", "step 1"]

    nxt = llmos("run", "--no-model", "--local", write_app(tmp_path, "other", OTHER))
    assert nxt.returncode == 0, nxt.stderr
    assert f"resumed durable process {interrupted.durable_id}" in nxt.stderr
    assert step_lines(nxt.stdout) == ["step 2", "step 3"]


# -- cancel ------------------------------------------------------------------------------------------
def test_cancel_stops_an_unfinished_one_for_good(tmp_path):
    app = write_app(tmp_path, "steps", STEPS)
    killed = run_and_kill(tmp_path, app, "5", "0.4", after="step 0\n")

    cancelled = llmos("cancel", killed.durable_id, "--reason", "not needed")
    assert cancelled.returncode == 0, cancelled.stderr
    assert re.search(r"\bcancelled\b", row(cancelled.stdout, killed.durable_id))

    nxt = llmos("run", "--no-model", "--local", write_app(tmp_path, "other", OTHER))
    assert nxt.returncode == 0, nxt.stderr
    assert "resumed" not in nxt.stderr and step_lines(nxt.stdout) == []

    listing = llmos("ps", "--durable")
    assert re.search(r"\bcancelled\b", row(listing.stdout, killed.durable_id))
    again = llmos("cancel", killed.durable_id)
    assert again.returncode == 1 and "has ended" in again.stderr and "Traceback" not in again.stderr
    unknown = llmos("cancel", "0123456789ab")
    assert unknown.returncode == 1 and "no durable process '0123456789ab'" in unknown.stderr


def test_cancel_stops_one_that_runs_in_another_llmos_run(tmp_path):
    """`llmos cancel ID` stops it "wherever it runs": here in a `llmos run --durable` of its own."""
    app = write_app(tmp_path, "steps", STEPS)
    out, err = tmp_path / "running.out", tmp_path / "running.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        running = subprocess.Popen([*CLI, "run", "--durable", "--local", "--no-model", app, "100", "0.2"],
                                   stdout=stdout, stderr=stderr, env={**os.environ, **WIDE})
    try:
        poll(lambda: "step 1\n" in out.read_text() or running.poll() is not None, 60, "step 1")
        assert running.poll() is None, err.read_text()
        durable_id = durable_id_in(err.read_text())
        listing = llmos("ps", "--durable")
        assert re.search(r"\brunning\b", row(listing.stdout, durable_id))
        cancelled = llmos("cancel", durable_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert re.search(r"\bcancelled\b", row(cancelled.stdout, durable_id))
        code = running.wait(timeout=30)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert code == 137, err.read_text()  # killed, as `llmos run` reports a killed process
    assert "KILLED" in err.read_text() and "cancelled" in err.read_text()
    assert len(step_lines(out.read_text())) < 100


def test_cancel_of_an_id_that_cannot_be_one_is_a_clear_error():
    done = llmos("cancel", "NOT-AN-ID")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "error:" in done.stderr and "Traceback" not in done.stderr


# -- supervision -------------------------------------------------------------------------------------
def test_restart_options(tmp_path):
    app = write_app(tmp_path, "steps", STEPS)
    bad = llmos("run", "--durable", "--local", "--no-model", "--restart", "sometimes", app, "1")
    assert bad.returncode == 2, bad.stderr  # a usage error, before anything runs
    assert "--restart is never, on-failure or always" in bad.stderr and "Traceback" not in bad.stderr
    negative = llmos("run", "--durable", "--local", "--no-model", "--restart", "always", "--max-restarts", "-1",
                     app, "1")
    assert negative.returncode == 2 and "--max-restarts" in negative.stderr

    runs = tmp_path / "runs.txt"
    failer = write_app(tmp_path, "failer", FAILER)
    supervised = llmos("run", "--local", "--no-model", "--restart", "on-failure", "--max-restarts", "1",
                       failer, str(runs))  # --restart alone makes it durable
    assert supervised.returncode == 1
    assert "restarted 1 times within 60 s, and ended again: RuntimeError: boom" in supervised.stderr
    assert runs.read_text().splitlines() == ["run", "run"]
    assert re.search(r"durable process [0-9a-f]{12}", supervised.stderr)


# -- with a daemon -----------------------------------------------------------------------------------
async def test_a_durable_run_and_ps_in_the_daemon(tmp_path):
    app = write_app(tmp_path, "steps", STEPS)
    async with served(FakeDriver()) as srv:
        done = await allmos("run", "--durable", app, "2", LLMOS_URL=srv.url)
        listing = await allmos("ps", "--durable", LLMOS_URL=srv.url)
        durable_id = durable_id_in(done.stderr)
        async with DaemonClient(srv.url, srv.key) as client:
            info = await client.durable_info(durable_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "step 0\nstep 1\ncounted to 2\n"
    assert srv.url in done.stderr  # it ran there
    assert info.state is DurableState.EXITED and info.steps == 4
    assert re.search(r"\bexited\b", row(listing.stdout, durable_id)) and srv.url in listing.stdout


async def test_resume_in_the_daemon_finishes_a_killed_local_run(tmp_path):
    app = write_app(tmp_path, "steps", STEPS)
    killed = await anyio.to_thread.run_sync(lambda: run_and_kill(tmp_path, app, "4", "0.4", after="step 1\n"))
    async with served(FakeDriver(), resume=False) as srv:
        listing = await allmos("ps", "--durable", LLMOS_URL=srv.url)
        resumed = await allmos("resume", killed.durable_id, LLMOS_URL=srv.url)
        async with DaemonClient(srv.url, srv.key) as client:
            status = await client.durable_wait(killed.durable_id, timeout=20)
            info = await client.durable_info(killed.durable_id)
        again = await allmos("resume", killed.durable_id, LLMOS_URL=srv.url)
        written = srv.kernel.console.written(status.pid)
    assert re.search(r"\bunfinished\b", row(listing.stdout, killed.durable_id))
    assert resumed.returncode == 0, resumed.stderr
    assert f"durable process {killed.durable_id} resumed in the daemon at {srv.url}" in resumed.stderr
    assert status.state is ProcState.EXITED and status.result == "counted to 4"
    assert info.state is DurableState.EXITED and info.steps == 8
    assert step_lines(written) == ["step 2", "step 3"]  # what was recorded is not written again
    assert again.returncode == 1 and "has ended" in again.stderr


async def test_resume_here_without_a_daemon_on_a_model_served_elsewhere(tmp_path):
    """`llmos resume ID` with no daemon boots a kernel here, with a model (it has no
    --no-model): here an OpenAI-compatible server (a served FakeDriver that keeps no
    durable record of its own)."""
    app = write_app(tmp_path, "steps", STEPS)
    killed = await anyio.to_thread.run_sync(lambda: run_and_kill(tmp_path, app, "4", "0.4", after="step 1\n"))
    async with served(FakeDriver(), durable=None) as model_server:
        resumed = await allmos("resume", killed.durable_id, "--model", f"openai:{model_server.url}/v1#fake")
    assert resumed.returncode == 0, resumed.stderr
    assert step_lines(resumed.stdout) == ["step 2", "step 3"]
    listing = await allmos("ps", "--durable")
    assert re.search(r"\bexited\b", row(listing.stdout, killed.durable_id))


async def test_a_daemon_stopped_with_ctrl_c_leaves_its_durable_processes_unfinished(tmp_path):
    """`llmos serve` stopped by Ctrl-C: its durable processes are not over (the README: "Ctrl-C
    ... the next boot goes on with it"); the next `llmos run` here finishes them. The daemon
    runs on a model served elsewhere (a served FakeDriver that keeps no durable record)."""
    from llmos.testing import free_port, wait_for_port

    app = write_app(tmp_path, "steps", STEPS)
    port = free_port()
    log = tmp_path / "serve.log"
    async with served(FakeDriver(), durable=None) as model_server:
        with open(log, "wb") as out:
            daemon = subprocess.Popen([*CLI, "serve", "--port", str(port), "--model",
                                       f"openai:{model_server.url}/v1#fake"],
                                      stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **WIDE})
        try:
            await anyio.to_thread.run_sync(lambda: wait_for_port(port, daemon, 60, "`llmos serve`"))
            async with DaemonClient(f"http://127.0.0.1:{port}", None) as client:
                info = await client.spawn(app, ["6", "0.3"], durable=True)
                with anyio.fail_after(20):
                    while (await client.durable_info(info.durable_id)).steps < 2:
                        await anyio.sleep(0.05)
            daemon.send_signal(signal.SIGINT)
            code = await anyio.to_thread.run_sync(lambda: daemon.wait(timeout=30))
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    assert code == 0, log.read_text()[-3000:]
    listing = await allmos("ps", "--durable")
    assert re.search(r"\bunfinished\b", row(listing.stdout, info.durable_id)), log.read_text()[-3000:]
    nxt = await allmos("run", "--no-model", "--local", write_app(tmp_path, "other", OTHER))
    assert nxt.returncode == 0, nxt.stderr
    assert f"resumed durable process {info.durable_id}" in nxt.stderr
    assert step_lines(nxt.stdout)[-1] == "step 5"
