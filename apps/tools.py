"""What `llmos tools` and `llmos plugins` show."""

from __future__ import annotations

from rich.table import Table

from llmos.plugins import PluginInfo
from llmos.syscalls import Sys, ToolSpec


async def list_tools(sys: Sys) -> list[ToolSpec]:
    """An app: the tools this process may call."""
    return await sys.list_tools()


def tools_table(specs: list[ToolSpec]) -> Table:
    table = Table("name", "from", "runs", "timeout", "description")
    for spec in specs:
        runs = "sandbox" if spec.sandboxed else ("remote" if spec.source.startswith("mcp:") else "in-process")
        summary = " ".join(spec.description.split("\n\n")[0].split())  # its first paragraph, on one line
        table.add_row(spec.name, spec.source, runs, f"{spec.timeout_s:g} s", summary)
    return table


def plugins_table(plugins: list[PluginInfo]) -> Table:
    table = Table("plugin", "from", "hooks", "status")
    for plugin in plugins:
        status = f"[red]failed: {plugin.error}[/]" if plugin.error else "loaded"
        table.add_row(plugin.name, plugin.source, ", ".join(plugin.hooks), status)
    return table
