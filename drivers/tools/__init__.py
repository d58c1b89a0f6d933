"""llmos.drivers.tools: Python functions as tools (in-process or sandboxed), MCP servers' tools,
and the built-in tools. The kernel sees them through `llmos.kernel.tools.ToolProvider`."""

from llmos.drivers.tools.function import Tool, tool
from llmos.drivers.tools.sandbox import Limits
from llmos.drivers.tools.toolbox import REGISTERED, Registered, ToolBox, register_tool, registration

__all__ = ["Limits", "REGISTERED", "Registered", "Tool", "ToolBox", "register_tool", "registration", "tool"]
