"""The real shell in a pseudo-terminal, on the real model: start, a background job, ps shows
it, kill ends it, chat answers, Ctrl-C spares the shell, Ctrl-D leaves."""

from __future__ import annotations

import os
import sys

import pytest

pexpect = pytest.importorskip("pexpect")

PROMPT = "llmos> "


def start_shell(*args: str) -> pexpect.spawn:
    env = {**os.environ, "TERM": "dumb", "PROMPT_TOOLKIT_NO_CPR": "1"}
    shell = pexpect.spawn(sys.executable, ["-m", "llmos.apps.cli", "shell", *args], env=env, encoding="utf-8",
                          timeout=120, dimensions=(50, 200))
    shell.expect(PROMPT)
    return shell


def command(shell: pexpect.spawn, line: str) -> str:
    shell.sendline(line)
    shell.expect(PROMPT)
    return shell.before


def leave(shell: pexpect.spawn) -> None:
    # A control key means end of input only once the prompt reads the terminal raw: the
    # prompt text is written first, then the terminal leaves cooked mode (echo goes off).
    assert shell.waitnoecho(timeout=30), "the prompt never took the terminal"
    shell.sendcontrol("d")
    shell.expect("bye")
    shell.expect(pexpect.EOF)
    shell.wait()
    assert shell.exitstatus == 0


@pytest.mark.model
def test_a_session_on_the_real_model():
    shell = start_shell()
    try:
        shell.sendline("run chat 'Tell me a long story about a dragon.' --max-tokens 400 &")
        shell.expect(r"\[1\] (\d+)")
        pid = shell.match.group(1)
        shell.expect(PROMPT)
        listing = command(shell, "ps")
        assert "chat" in listing and pid in listing
        assert f"killed {pid}" in command(shell, f"kill {pid}")
        assert "Killed" in command(shell, "jobs")
        shell.sendline("chat")
        shell.expect("you> ")
        shell.sendline("What is the capital of France?")
        shell.expect("you> ")
        assert "Paris" in shell.before
        shell.sendline("/exit")
        shell.expect(PROMPT)
        leave(shell)
    finally:
        shell.close(force=True)


def test_ctrl_c_interrupts_the_foreground_job_not_the_shell(tmp_path):
    app = tmp_path / "slow.py"
    app.write_text("async def main(sys):\n    await sys.write('started\\n')\n    await sys.sleep(60)\n")
    shell = start_shell("--no-model")
    try:
        shell.sendline(f"run {app}")
        shell.expect("started")
        shell.sendintr()
        shell.expect("KILLED: interrupted")
        shell.expect(PROMPT)
        assert "error: unknown command" in command(shell, "nonsense")
        leave(shell)
    finally:
        shell.close(force=True)
