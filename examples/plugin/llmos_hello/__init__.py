"""An example llmos plugin: one tool, one app, one command, through llmos's hooks.

Its tool runs in llmos's sandbox (a child process with CPU and memory limits and no
secrets in its environment), as every plugin tool does unless the plugin sets
`llmos_trusted = True` here or the tool says `@tool(trusted=True)`.
"""

from __future__ import annotations

from typing import Any

import llmos
from llmos.hookspecs import hookimpl


@llmos.tool(timeout=10)
def word_count(text: str) -> int:
    """Count the words in a text.

    Args:
        text: the text to count the words of
    """
    return len(text.split())


async def shout(sys: llmos.Sys, *words: str) -> str:
    """An app: the words in capitals, and how many there are (asked of the word_count tool)."""
    text = " ".join(words)
    count = await sys.call_tool("word_count", text=text)
    return f"{text.upper()}! ({count} words)"


@hookimpl
def register_tools(register: Any) -> None:
    register(word_count)


@hookimpl
def register_apps(register: Any) -> None:
    register("shout", shout, "say the words louder, counting them with the word_count tool")


@hookimpl
def register_commands(cli: Any) -> None:
    @cli.command()
    def hello(name: str = "world") -> None:
        """Say hello (a command added by the llmos-hello plugin)."""
        print(f"hello, {name}")
