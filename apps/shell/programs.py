"""The little apps behind `mem search` and `mem add`: the memory syscalls, run as processes."""

from __future__ import annotations

from llmos.syscalls import Sys

SHELL_NAMESPACE = "shell"  # where the shell's `mem add` keeps items unless told otherwise


async def search(sys: Sys, query: str, namespace: str = SHELL_NAMESPACE, k: int = 5) -> None:
    items = await sys.recall(query, int(k), namespace=namespace)
    if not items:
        await sys.write(f"nothing in namespace {namespace!r} matches\n")
    for item in items:
        await sys.write(f"{item.score:.2f}  {item.id}  {item.text}\n")


async def add(sys: Sys, text: str, namespace: str = SHELL_NAMESPACE) -> None:
    await sys.write(f"remembered as {await sys.remember(text, namespace=namespace)} in {namespace!r}\n")
