"""The tools of Model Context Protocol servers, through the official `mcp` SDK (2.x).

Servers are configured as MCP clients usually configure them (LLMOS_HOME/mcp.json):

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]},
        "search": {"url": "http://127.0.0.1:8000/mcp", "timeout": 60}
    }}

Each server's tools join the kernel's ToolBox as "SERVER.TOOL" (capability
"tool.SERVER.TOOL"; "tool.SERVER.*" grants them all). Arguments are checked against the
tool's input schema before the call. A server that cannot be reached is skipped with a
warning (`failures` says why); one that dies later fails its calls with ToolUnavailable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import mcp
from mcp import Client, StdioServerParameters
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmos.drivers.tools.toolbox import ToolBox
from llmos.kernel import params
from llmos.kernel.errors import ConfigError, InvalidToolArguments, ToolFailed, ToolUnavailable
from llmos.kernel.tools import ToolSpec

log = logging.getLogger(__name__)


class ServerConfig(BaseModel):
    """One MCP server: a command to start (stdio) or the URL of a running one (HTTP)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None  # None: the SDK passes only a safe default set (PATH, HOME, ...)
    cwd: str | None = None
    url: str | None = None
    timeout: float = Field(default=params.TOOL_TIMEOUT_S, gt=0, le=params.MAX_TOOL_TIMEOUT_S)
    # The user vouches that this server's tools send what they are given nowhere outside
    # (kernel/security.py); by default they may.
    sends_data: bool = True

    @model_validator(mode="after")
    def _one_transport(self) -> ServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of 'command' (a stdio server) or 'url' (an HTTP server)")
        return self

    def server(self) -> StdioServerParameters | str:
        if self.url is not None:
            return self.url
        return StdioServerParameters(command=self.command or "", args=self.args, env=self.env, cwd=self.cwd)


def parse_config(data: Mapping[str, Any]) -> list[ServerConfig]:
    """Servers from {"mcpServers": {name: {...}}} (or the inner mapping alone)."""
    servers = data.get("mcpServers", data)
    try:
        return [ServerConfig(name=name, **dict(entry)) for name, entry in servers.items()]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad MCP server configuration: {exc}") from None


def read_config(path: Path) -> list[ServerConfig]:
    """The servers in a JSON file."""
    try:
        return parse_config(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the MCP server configuration: {exc}") from None


@asynccontextmanager
async def connected(servers: list[ServerConfig], toolbox: ToolBox,
                    failures: dict[str, str] | None = None) -> AsyncIterator[ToolBox]:
    """Connect to every server, add its tools to `toolbox`, and disconnect on exit.
    Enter and exit in the same task (llmos.boot does)."""
    async with AsyncExitStack() as stack:
        for server in servers:
            try:
                client = await stack.enter_async_context(
                    Client(server.server(), read_timeout_seconds=params.MCP_CONNECT_TIMEOUT_S))
                await _add_tools(server, client, toolbox)
            except Exception as exc:  # noqa: BLE001 - an unreachable server is skipped, the kernel boots
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("MCP server %s is skipped: %s", server.name, reason)
                if failures is not None:
                    failures[server.name] = reason
        yield toolbox


async def _add_tools(server: ServerConfig, client: Client, toolbox: ToolBox) -> None:
    cursor = None
    while True:
        listing = await client.list_tools(cursor=cursor)
        for remote in listing.tools:
            # Another program's tool: its result may be anyone's text, and it may send what it is
            # given anywhere. A server's own hints (readOnlyHint, openWorldHint) cannot switch the
            # audit or the injection rule off (the MCP spec: untrusted servers' annotations are
            # not to be relied on); only the user's mcp.json can ("sends_data": false).
            spec = ToolSpec(name=f"{server.name}.{remote.name}", description=remote.description or "",
                            parameters=remote.input_schema, timeout_s=server.timeout, source=f"mcp:{server.name}",
                            sends_data=server.sends_data)
            toolbox.add_remote(spec, RemoteTool(client, remote, spec.name, server.timeout))
        cursor = listing.next_cursor
        if not cursor:
            return


class RemoteTool:
    """Calls one tool of a connected server."""

    def __init__(self, client: Client, remote: mcp.types.Tool, name: str, timeout: float) -> None:
        self.client, self.remote, self.name, self.timeout = client, remote, name, timeout
        self.validator = jsonschema.Draft202012Validator(remote.input_schema)

    async def __call__(self, arguments: Mapping[str, Any]) -> Any:
        problems = [f"{'.'.join(map(str, e.absolute_path)) or 'arguments'}: {e.message}"
                    for e in self.validator.iter_errors(dict(arguments))]
        if problems:
            raise InvalidToolArguments(f"bad arguments to tool {self.name!r}: {'; '.join(problems)}")
        try:
            result = await self.client.call_tool(self.remote.name, dict(arguments), read_timeout_seconds=self.timeout)
        except mcp.MCPError as exc:
            raise ToolFailed(f"tool {self.name!r}: the MCP server answered with an error: {exc}") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            raise ToolUnavailable(f"tool {self.name!r}: its MCP server is gone ({type(exc).__name__})") from None
        return self._value(result)

    def _value(self, result: mcp.types.CallToolResult) -> Any:
        texts = [block.text for block in result.content if isinstance(block, mcp.types.TextContent)]
        if result.is_error:
            raise ToolFailed(f"tool {self.name!r} failed: {' '.join(texts) or 'no reason given'}")
        if result.structured_content is not None:
            return _unwrap(result.structured_content, self.remote.output_schema)
        if len(texts) == len(result.content):
            return texts[0] if len(texts) == 1 else "\n".join(texts)
        return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]


def _unwrap(value: Any, output_schema: dict[str, Any] | None) -> Any:
    """A primitive result that the server wrapped as {"result": value}, unwrapped."""
    props = (output_schema or {}).get("properties", {})
    if isinstance(value, dict) and set(value) == {"result"} and set(props) == {"result"}:
        return value["result"]
    return value
