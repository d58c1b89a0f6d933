"""The built-in tools: calculator, current_time, the workspace file tools, run_python."""

from __future__ import annotations

import datetime
import os

import pytest

import llmos
from llmos.drivers.tools.builtin import calculator
from llmos.kernel.errors import InvalidToolArguments, PermissionDenied, ToolFailed, ToolLimitExceeded
from llmos.kernel.tools import ToolContext
from llmos.testing import caught, result, spawn_and_wait


@pytest.mark.parametrize("expression, value", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("2 ** 10", 1024), ("7 // 2", 3), ("7 % 4", 3), ("-3 + +1", -2),
    ("sqrt(16) + pi - pi", 4.0), ("round(2.567, 2)", 2.57), ("max(1, 5, 3)", 5), ("1 / 4", 0.25),
])
async def test_the_calculator_does_arithmetic(expression, value):
    assert await calculator.run({"expression": expression}, ToolContext(pid=1, process="t")) == value


@pytest.mark.parametrize("expression", [
    "__import__('os').system('true')", "open('x')", "a + 1", "2 ** 10 ** 10", "1 / 0", "[1, 2]", "'a' * 3",
    "(lambda: 1)()", "factorial(10**6)",
])
async def test_the_calculator_refuses_what_is_not_arithmetic(expression):
    with pytest.raises(InvalidToolArguments, match="calculator cannot evaluate"):
        await calculator.run({"expression": expression}, ToolContext(pid=1, process="t"))


@pytest.fixture
async def kernel():  # its workspaces are under the test's own LLMOS_HOME (`llmos_home`)
    async with llmos.boot(None, memory=None, mcp_servers=None) as kernel:
        yield kernel


async def run(kernel, app, name="agent"):
    caps = llmos.syscalls.DEFAULT_APP_CAPS | {"tool.write_file", "tool.run_python"}  # beyond the defaults
    return result(await spawn_and_wait(kernel, app, name=name, caps=caps, timeout=30))


async def test_current_time_in_a_time_zone(kernel):
    async def main(sys):
        return await sys.call_tool("current_time", timezone="Asia/Tokyo"), await caught(
            sys.call_tool("current_time", timezone="Mars/Olympus"))

    now, error = await run(kernel, main)
    assert datetime.datetime.fromisoformat(now).utcoffset() == datetime.timedelta(hours=9)
    assert isinstance(error, InvalidToolArguments)


async def test_files_live_in_the_process_workspace(kernel, llmos_home):
    async def main(sys):
        await sys.call_tool("write_file", path="notes/a.txt", content="hello")
        await sys.call_tool("write_file", path="notes/a.txt", content=" world", append=True)
        return (await sys.call_tool("read_file", path="notes/a.txt"), await sys.call_tool("list_files"),
                await sys.call_tool("list_files", path="notes"))

    assert await run(kernel, main) == ("hello world", ["notes/"], ["a.txt"])
    assert (llmos_home / "workspaces" / "agent" / "notes" / "a.txt").read_text() == "hello world"


async def test_paths_that_escape_the_workspace_are_refused(kernel, llmos_home):
    (llmos_home / "secret.txt").write_text("top secret")
    (llmos_home / "workspaces" / "agent").mkdir(parents=True, exist_ok=True)
    os.symlink(llmos_home / "secret.txt", llmos_home / "workspaces" / "agent" / "link.txt")

    async def main(sys):
        return [await caught(sys.call_tool("read_file", path=path))
                for path in ("../../secret.txt", str(llmos_home / "secret.txt"), "link.txt", "../other/x")] + [
            await caught(sys.call_tool("write_file", path="../escape.txt", content="x")),
            await caught(sys.call_tool("list_files", path=".."))]

    errors = await run(kernel, main)
    assert all(isinstance(e, PermissionDenied) for e in errors), errors
    assert not (llmos_home / "workspaces" / "escape.txt").exists()


async def test_processes_have_separate_workspaces(kernel):
    async def writer(sys):
        await sys.call_tool("write_file", path="mine.txt", content="a")

    async def reader(sys):
        return await caught(sys.call_tool("read_file", path="mine.txt"))

    await run(kernel, writer, name="writer")
    error = await run(kernel, reader, name="reader")
    assert isinstance(error, ToolFailed) and "no file" in str(error)


async def test_run_python_runs_in_the_sandbox(kernel, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "shh")

    async def main(sys):
        ok = await sys.call_tool("run_python", code="import os\nprint('hi')\nsum(range(10))")
        secret = await sys.call_tool("run_python", code="import os; os.environ.get('AWS_SECRET_ACCESS_KEY')")
        hog = await caught(sys.call_tool("run_python", code="x = bytearray(2 * 1024**3)"))
        bad = await caught(sys.call_tool("run_python", code="1/0"))
        return ok, secret, hog, bad

    ok, secret, hog, bad = await run(kernel, main)
    assert ok == {"stdout": "hi\n", "result": "45"}
    assert secret == {"stdout": "", "result": None}
    assert isinstance(hog, ToolLimitExceeded) and hog.limit == "memory"
    assert isinstance(bad, ToolFailed) and "ZeroDivisionError" in str(bad)
