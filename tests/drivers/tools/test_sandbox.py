"""Sandboxed tools: memory and CPU limits, a scrubbed environment, the caller's workspace as
working folder, timeouts; every failure is one call's, and the kernel goes on. (The jail
around them: test_jail.py.)"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

import llmos
from llmos.kernel.errors import InvalidToolArguments, ToolFailed, ToolLimitExceeded, ToolTimeout
from llmos.testing import caught, result, spawn_and_wait

_spec = importlib.util.spec_from_file_location("sandbox_tools", Path(__file__).with_name("sandbox_tools.py"))
tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tools)
ALL = [tools.hog, tools.spin, tools.read_env, tools.where, tools.sleepy, tools.add, tools.boom]


@pytest.fixture
async def kernel():  # its workspaces are under the test's own LLMOS_HOME (`llmos_home`)
    async with llmos.boot(None, memory=None, tools=ALL, mcp_servers=None) as kernel:
        yield kernel


async def call(kernel, name, /, **arguments):
    async def main(sys):
        return await caught(sys.call_tool(name, **arguments))

    return result(await spawn_and_wait(kernel, main, caps={"tool.*"}, timeout=30))


async def test_a_sandboxed_tool_runs_and_answers(kernel):
    assert await call(kernel, "add", a=2, b=40) == ("returned", 42)
    assert next(s for s in kernel.tools.specs() if s.name == "add").sandboxed


async def test_arguments_are_validated_before_a_child_starts(kernel):
    assert isinstance(await call(kernel, "add", a="x", b=1), InvalidToolArguments)


async def test_memory_past_the_limit_fails_the_call_and_the_kernel_goes_on(kernel):
    error = await call(kernel, "hog", megabytes=1024)
    assert isinstance(error, ToolLimitExceeded) and error.limit == "memory" and "64 MB" in str(error)
    assert await call(kernel, "hog", megabytes=8) == ("returned", 8 * 2**20)


async def test_cpu_past_the_limit_is_stopped(kernel):
    began = time.perf_counter()
    error = await call(kernel, "spin")
    assert isinstance(error, ToolLimitExceeded) and error.limit == "cpu"
    assert time.perf_counter() - began < 15
    assert await call(kernel, "add", a=1, b=1) == ("returned", 2)


async def test_secrets_in_the_environment_do_not_reach_the_tool(kernel, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("LLMOS_TEST_TOKEN", "hunter2")
    assert await call(kernel, "read_env", name="OPENAI_API_KEY") == ("returned", None)
    assert await call(kernel, "read_env", name="LLMOS_TEST_TOKEN") == ("returned", None)
    assert await call(kernel, "read_env", name="PATH") == ("returned", os.environ["PATH"])


async def test_the_working_folder_and_home_are_the_caller_s_workspace(kernel, llmos_home):
    _, first = await call(kernel, "where")
    _, second = await call(kernel, "where")
    assert first == second and first["home"] == first["cwd"]
    assert Path(first["cwd"]).parent == llmos_home / "workspaces"


async def test_a_child_past_its_wall_timeout_is_killed(kernel):
    began = time.perf_counter()
    assert isinstance(await call(kernel, "sleepy", seconds=30), ToolTimeout)
    assert time.perf_counter() - began < 5


async def test_what_a_sandboxed_tool_raises_comes_back_as_tool_failed(kernel):
    error = await call(kernel, "boom")
    assert isinstance(error, ToolFailed) and "RuntimeError: kaboom" in str(error)
