"""MCP: a real stdio MCP server's tools, listed under a prefix and called like any tool."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import llmos
from llmos.kernel.errors import ConfigError, InvalidToolArguments, PermissionDenied, ToolFailed, ToolTimeout
from llmos.testing import caught, result, spawn_and_wait

SERVER = str(Path(__file__).with_name("mcp_echo_server.py"))
# The user vouches that the echo server sends nothing out (its tools may then follow one another
# without approval: kernel/security.py); without that, a server's tools are assumed to send.
CONFIG = {"mcpServers": {"echo": {"command": sys.executable, "args": [SERVER], "timeout": 5, "sends_data": False}}}


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
async def kernel():
    os.environ["LLMOS_TEST_SECRET"] = "s3cret"  # set while the server starts: it must not see it
    try:
        async with llmos.boot(None, memory=None, mcp_servers=CONFIG) as kernel:
            yield kernel
    finally:
        del os.environ["LLMOS_TEST_SECRET"]


async def run(kernel, app, caps=frozenset({"tool.echo.*"})):
    return result(await spawn_and_wait(kernel, app, caps=caps, timeout=30))


async def test_the_servers_tools_are_listed_under_its_prefix(kernel):
    async def main(sys):
        return {spec.name: spec for spec in await sys.list_tools()}

    specs = await run(kernel, main)
    assert set(specs) == {"echo.add", "echo.shout", "echo.fail", "echo.nap", "echo.secret"}
    assert specs["echo.add"].source == "mcp:echo" and specs["echo.add"].description == "Add two integers."
    assert specs["echo.add"].parameters["required"] == ["a", "b"]
    # what the user's configuration says counts; the server's own hints (readOnlyHint and
    # openWorldHint false on add) do not switch the audit or the injection rule off
    assert not specs["echo.add"].sends_data and not specs["echo.add"].read_only


async def test_calls_reach_the_server_and_come_back(kernel):
    async def main(sys):
        return await sys.call_tool("echo.add", a=2, b=3), await sys.call_tool("echo.shout", text="hi")

    assert await run(kernel, main) == (5, "HI")


async def test_errors_are_typed(kernel):
    async def main(sys):
        return (await caught(sys.call_tool("echo.add", a="two", b=3)),
                await caught(sys.call_tool("echo.fail", reason="on purpose")),
                await caught(sys.call_tool("echo.nap", seconds=2, timeout=0.2)),
                await sys.call_tool("echo.add", a=1, b=1))

    bad, failed, slow, after = await run(kernel, main)
    assert isinstance(bad, InvalidToolArguments) and "'two' is not of type 'integer'" in str(bad)
    assert isinstance(failed, ToolFailed) and "on purpose" in str(failed)
    assert isinstance(slow, ToolTimeout)
    assert after == 2  # the session survives a timed-out call


async def test_capabilities_apply_to_mcp_tools(kernel):
    async def main(sys):
        return [s.name for s in await sys.list_tools()], await caught(sys.call_tool("echo.shout", text="x"))

    names, error = await run(kernel, main, caps={"tool.echo.add"})
    assert names == ["echo.add"] and isinstance(error, PermissionDenied)


async def test_the_server_does_not_inherit_secrets(kernel):
    async def main(sys):
        return await sys.call_tool("echo.secret")

    assert await run(kernel, main) == "<unset>"  # the SDK passes only a safe default environment


async def test_an_unreachable_server_is_skipped_and_a_bad_config_refused(tmp_path):
    broken = {"mcpServers": {"gone": {"command": str(tmp_path / "no-such-server")}}}
    async with llmos.boot(None, memory=None, mcp_servers=broken) as kernel:
        assert not [s for s in kernel.tools.specs() if s.name.startswith("gone.")]
    with pytest.raises(ConfigError, match="exactly one of 'command'"):
        async with llmos.boot(None, memory=None, mcp_servers={"mcpServers": {"x": {}}}):
            pass
