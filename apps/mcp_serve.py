"""`llmos mcp serve`: this kernel's tools, as a Model Context Protocol server over stdio.

An ordinary app: it lists and calls tools through its own syscalls, so the tools other
agent systems see are exactly those its capabilities grant, each call with the tool's
timeout, traced and accounted like any other.
"""

from __future__ import annotations

from typing import Any

import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from pydantic_core import to_json

import llmos
from llmos.syscalls import CallTool, Sys, SyscallError


def build_server(sys: Sys) -> Server:
    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        specs = await sys.list_tools()
        return types.ListToolsResult(tools=[types.Tool(name=spec.name, description=spec.description,
                                                       input_schema=spec.parameters) for spec in specs])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        try:  # a request object: a tool's own argument named `timeout` stays an argument
            value = await sys.syscall(CallTool(name=params.name, arguments=params.arguments or {}))
        except SyscallError as exc:
            return types.CallToolResult(content=[types.TextContent(text=str(exc))], is_error=True)
        text = value if isinstance(value, str) else to_json(value).decode()
        structured = value if isinstance(value, dict) else None
        return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)

    return Server("llmos", version=llmos.__version__, on_list_tools=list_tools, on_call_tool=call_tool)


async def main(sys: Sys) -> None:
    server = build_server(sys)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())
