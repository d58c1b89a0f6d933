"""codegen: code for a description, taken out of the model's fenced code block."""

from __future__ import annotations

import re

from llmos.syscalls import Sys

SYSTEM = "You are a coding assistant. Answer with a single ```{language} code block and nothing else."
CODE_TOKENS = 256
_FENCE = re.compile(r"```[\w+-]*[^\n]*\n(.*?)(?:\n?```|$)", re.DOTALL)


def extract_code(text: str) -> str:
    """The first fenced block's contents (an unclosed fence runs to the end), else the text."""
    match = _FENCE.search(text)
    return (match.group(1) if match else text).strip("\n")


async def main(sys: Sys, description: str, language: str = "python", max_tokens: int = CODE_TOKENS) -> str:
    """Write `language` code that does what `description` says; print and return only the code."""
    reply = await sys.chat(messages=[{"role": "user", "content": f"Write {language} code: {description}"}],
                           system=SYSTEM.format(language=language), max_tokens=int(max_tokens),
                           stop=("\n```",))  # the closing fence ends the code; the chatter after it is never generated
    code = extract_code(reply.text)
    await sys.write(code + "\n")
    return code
