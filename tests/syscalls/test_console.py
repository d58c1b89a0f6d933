"""write and ask_user: the user's terminal, through whatever console the kernel has."""

from __future__ import annotations

import anyio

import llmos
from llmos.syscalls import Errno, NoConsole, PermissionDenied, Timeout
from llmos.testing import ScriptedConsole, caught, result, spawn_and_wait


async def asker(sys, question):  # noqa: ANN001, ANN201
    await sys.write("thinking...\n")
    return await sys.ask_user(question)


async def test_ask_user_returns_the_answer_and_write_reaches_the_console() -> None:
    async with llmos.boot(None) as kernel:
        kernel.console = console = ScriptedConsole("yes")
        status = await spawn_and_wait(kernel, asker, "Approve?")
    assert result(status) == "yes"
    assert console.questions == [(status.pid, "Approve?")]
    assert console.written == [(status.pid, "thinking...\n")]


async def test_without_a_console_writes_vanish_and_questions_fail_with_enotty() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.write("nobody sees this")
        return await caught(sys.ask_user("anyone?"))

    async with llmos.boot(None) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert isinstance(err, NoConsole) and err.code is Errno.ENOTTY


async def test_an_unanswered_question_times_out() -> None:
    class Silent(ScriptedConsole):
        async def ask(self, pid: int, question: str) -> str:
            await anyio.sleep_forever()

    async def main(sys):  # noqa: ANN001
        return await caught(sys.ask_user("still there?", timeout=0.05))

    async with llmos.boot(None) as kernel:
        kernel.console = Silent()
        assert isinstance(result(await spawn_and_wait(kernel, main)), Timeout)


async def test_the_console_needs_its_capability() -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.write("hi"))

    async with llmos.boot(None) as kernel:
        kernel.console = ScriptedConsole()
        assert isinstance(result(await spawn_and_wait(kernel, main, caps={"ipc"})), PermissionDenied)
