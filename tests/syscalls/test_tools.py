"""The tool syscalls: list_tools, call_tool, their capabilities, timeouts, tracing and accounting."""

from __future__ import annotations

import time

import anyio
import pytest

import llmos
from llmos.syscalls import (
    InvalidToolArguments,
    NoSuchTool,
    PermissionDenied,
    ProcState,
    ToolFailed,
    ToolTimeout,
    ToolUnavailable,
)
from llmos.testing import caught, result, spawn_and_wait, until_state


@llmos.tool(read_only=True, sends_data=False, trusted_output=True)  # as it is: pure
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


@llmos.tool(timeout=0.3)
def slow(seconds: float) -> str:
    """Block the calling thread for a while."""
    time.sleep(seconds)
    return "done"


@llmos.tool(sends_data=False)
async def async_slow(seconds: float) -> str:
    """Sleep without a thread."""
    await anyio.sleep(seconds)
    return "done"


@llmos.tool
def broken() -> None:
    """Always raises."""
    raise ValueError("no luck")


TOOLS = [add, slow, async_slow, broken]


@pytest.fixture
async def kernel():
    async with llmos.boot(None, memory=None, tools=TOOLS, mcp_servers=None) as kernel:
        yield kernel


async def test_a_granted_tool_is_called_with_validated_arguments(kernel):
    async def main(sys):
        return await sys.call_tool("add", a=2, b="3")

    assert result(await spawn_and_wait(kernel, main, caps={"tool.add"})) == 5


async def test_bad_arguments_are_a_typed_error_and_the_tool_does_not_run(kernel):
    async def main(sys):
        return [await caught(sys.call_tool("add", a="two")), await caught(sys.call_tool("add", a=1, c=2)),
                await caught(sys.call_tool("add"))]

    errors = result(await spawn_and_wait(kernel, main, caps={"tool.*"}))
    assert all(isinstance(e, InvalidToolArguments) for e in errors)
    assert "a: Input should be a valid integer" in str(errors[0])
    assert "c: Extra inputs are not permitted" in str(errors[1])
    assert "a: Field required" in str(errors[2])


async def test_a_tool_without_its_capability_is_refused_and_hidden(kernel):
    async def main(sys):
        names = [spec.name for spec in await sys.list_tools()]
        return names, await caught(sys.call_tool("broken"))

    names, error = result(await spawn_and_wait(kernel, main, caps={"tool.add"}))
    assert "add" in names and "broken" not in names and "calculator" not in names
    assert isinstance(error, PermissionDenied) and "tool.broken" in str(error)


async def test_spawn_narrows_the_tools_a_child_may_call(kernel):
    async def child(sys):
        return await caught(sys.call_tool("add", a=1))

    async def parent(sys):
        info = await sys.spawn(child, caps={"tool.slow"})
        narrowed = await sys.wait(info.pid)
        info = await sys.spawn(child, caps={"tool.add", "tool.broken"})  # tool.broken is not the parent's
        widened = await sys.wait(info.pid)
        return narrowed.result, widened.result

    narrowed, widened = result(await spawn_and_wait(kernel, parent, caps={"proc.spawn", "tool.add"}))
    assert isinstance(narrowed, PermissionDenied)
    assert widened == ("returned", 1)


async def test_default_app_capabilities_grant_only_the_builtin_tools_that_change_nothing(kernel):
    async def main(sys):
        return sorted(spec.name for spec in await sys.list_tools())

    names = result(await spawn_and_wait(kernel, main, caps=llmos.syscalls.DEFAULT_APP_CAPS))
    assert names == ["calculator", "current_time", "list_files", "read_file"]  # no run_python, no write_file


async def test_an_unknown_tool_lists_the_callable_ones(kernel):
    async def main(sys):
        return await caught(sys.call_tool("nope"))

    error = result(await spawn_and_wait(kernel, main, caps={"tool.*"}))
    assert isinstance(error, NoSuchTool) and error.code == 2 and "add" in str(error)


async def test_calling_a_tool_not_granted_is_eperm_whether_or_not_it_exists(kernel):
    async def main(sys):
        return [await caught(sys.call_tool(name)) for name in ("nope", "calculator")]

    errors = result(await spawn_and_wait(kernel, main, caps={"tool.add"}))
    assert [type(e) for e in errors] == [PermissionDenied, PermissionDenied]
    assert "'tool.nope'" in errors[0].message and "'tool.calculator'" in errors[1].message


async def test_a_raising_tool_fails_the_call_not_the_process(kernel):
    async def main(sys):
        return await caught(sys.call_tool("broken")), await sys.call_tool("add", a=1)

    error, after = result(await spawn_and_wait(kernel, main, caps={"tool.*"}))
    assert isinstance(error, ToolFailed) and "ValueError: no luck" in str(error)
    assert after == 1


async def test_a_sync_tool_past_its_timeout_fails_and_the_loop_stays_free(kernel):
    ticks = 0

    async def ticker(sys):
        nonlocal ticks
        while True:
            ticks += 1
            await sys.sleep(0.01)

    async def main(sys):
        began = time.perf_counter()
        error = await caught(sys.call_tool("slow", seconds=1.0))
        return error, time.perf_counter() - began

    tick = await kernel.spawn(ticker, caps=set())
    error, elapsed = result(await spawn_and_wait(kernel, main, caps={"tool.*"}))
    kernel.kill(tick.pid)
    assert isinstance(error, ToolTimeout) and error.code == 110
    assert elapsed < 0.9 and ticks >= 10  # the sleeping thread never held the event loop


async def test_a_caller_may_shorten_a_timeout(kernel):
    async def main(sys):
        return await caught(sys.call_tool("async_slow", seconds=5, timeout=0.05))

    assert isinstance(result(await spawn_and_wait(kernel, main, caps={"tool.*"})), ToolTimeout)


async def test_calls_are_traced_and_accounted(kernel):
    async def main(sys):
        await sys.call_tool("add", a=1)
        await caught(sys.call_tool("add", a="x"))
        await sys.call_tool("async_slow", seconds=0.05)
        return next(p.stats for p in await sys.ps() if p.pid == sys.pid)

    info = await kernel.spawn(main, caps={"tool.*", "proc.admin"})
    stats = result(await kernel.wait(info.pid))
    events = [(e.call, e.outcome) for e in kernel.trace if e.pid == info.pid]
    assert events[:3] == [("call_tool", "ok"), ("call_tool", "EINVAL"), ("call_tool", "ok")]
    assert stats.tool_calls == 3 and stats.tool_time_s >= 0.05


async def test_a_killed_process_stops_waiting_for_its_tool(kernel):
    async def main(sys):
        return await sys.call_tool("async_slow", seconds=10)

    info = await kernel.spawn(main, caps={"tool.*"})
    await until_state(kernel, info.pid, ProcState.BLOCKED)  # waiting for the tool
    kernel.kill(info.pid)
    status = await kernel.wait(info.pid, timeout=2)
    assert status.state is ProcState.KILLED


async def test_a_kernel_without_tools_says_so():
    async with llmos.Kernel(llmos.syscalls.TABLE, llmos.Sys) as kernel:
        async def main(sys):
            return await caught(sys.list_tools())

        assert isinstance(result(await spawn_and_wait(kernel, main)), ToolUnavailable)
