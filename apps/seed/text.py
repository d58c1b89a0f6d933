"""generate and chat: the seed documents' first examples, as apps."""

from __future__ import annotations

from typing import Any

from llmos.apps.seed.output import show
from llmos.syscalls import NoConsole, Sys

EXIT = "/exit"


async def generate(sys: Sys, prompt: str, **sampling: Any) -> str:
    """Continue `prompt` as plain text, streaming it to the user."""
    return await show(sys, await sys.generate(prompt, stream=True, **sampling))


async def chat(sys: Sys, *messages: str, system: str | None = None, **sampling: Any) -> str | None:
    """Say each message in turn in one conversation and return the last reply; with no
    message, converse with the user (through `ask_user`) until /exit or end of input."""
    if messages:
        reply = ""
        for message in messages:
            reply = await show(sys, await sys.chat(message, system=system, stream=True, **sampling))
        return reply
    while (line := await _next_line(sys)) is not None:
        if line.strip():
            await show(sys, await sys.chat(line, system=system, stream=True, **sampling))
    return None


async def _next_line(sys: Sys) -> str | None:
    try:
        line = await sys.ask_user("you> ")
    except NoConsole:  # end of input
        return None
    return None if line.strip() == EXIT else line


async def complete(sys: Sys, prompt: str, **sampling: Any) -> str:
    """The raw continuation of `prompt`, unstripped (what `Model.generate_text` returns)."""
    return (await sys.generate(prompt, **sampling)).text


async def converse(sys: Sys, messages: list[dict[str, str]], system: str | None = None, **sampling: Any) -> str:
    """One reply to a whole conversation given as [{"role": ..., "content": ...}, ...]."""
    reply = await sys.chat(messages=messages, system=system, **sampling)
    return reply.text
