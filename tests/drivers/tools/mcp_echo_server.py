"""A small, real MCP server over stdio (the official SDK's MCPServer), for the MCP tests."""

from __future__ import annotations

import os
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("echo")
# What add and shout say of themselves (true, but an MCP client may not rely on it).
CLOSED = ToolAnnotations(readOnlyHint=True, openWorldHint=False)


@server.tool(annotations=CLOSED)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(annotations=CLOSED)
def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


@server.tool()
def fail(reason: str) -> str:
    """Always fails, saying why (a ToolError's message reaches the client; others are hidden)."""
    raise ToolError(reason)


@server.tool()
def nap(seconds: float) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "rested"


@server.tool()
def secret() -> str:
    """An environment variable the server may or may not see."""
    return os.environ.get("LLMOS_TEST_SECRET", "<unset>")


if __name__ == "__main__":
    server.run()
