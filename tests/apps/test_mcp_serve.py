"""`llmos mcp serve`: another agent system uses llmos's tools through the official MCP client."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mcp import Client, StdioServerParameters

LLMOS = str(Path(sys.executable).with_name("llmos"))


async def test_an_mcp_client_lists_and_calls_the_served_tools(llmos_home):
    env = {"PATH": os.environ["PATH"], "LLMOS_HOME": str(llmos_home)}  # the SDK passes no other variable
    server = StdioServerParameters(command=LLMOS, args=["mcp", "serve", "--cap", "tool.calculator",
                                                        "--cap", "tool.write_file"], env=env)
    async with Client(server, read_timeout_seconds=60) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        answer = await client.call_tool("calculator", {"expression": "6 * 7"})
        bad = await client.call_tool("calculator", {"expression": "import os"})
        refused = await client.call_tool("read_file", {"path": "x"})
        wrote = await client.call_tool("write_file", {"path": "a.txt", "content": "hi"})
    assert names == {"calculator", "write_file"}
    assert answer.content[0].text == "42" and not answer.is_error
    assert bad.is_error and "calculator cannot evaluate" in bad.content[0].text
    assert refused.is_error and "EPERM" in refused.content[0].text
    assert not wrote.is_error
    assert [p.read_text() for p in (llmos_home / "workspaces").rglob("a.txt")] == ["hi"]
