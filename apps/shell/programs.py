"""The little apps behind `mem search`, `mem add` and `tools`: syscalls, run as processes."""

from __future__ import annotations

from llmos.syscalls import Sys, SyscallError

SHELL_NAMESPACE = "shell"  # where the shell's `mem add` keeps items unless told otherwise


async def search(sys: Sys, query: str, namespace: str = SHELL_NAMESPACE, k: int = 5) -> None:
    items = await sys.recall(query, int(k), namespace=namespace)
    if not items:
        await sys.write(f"nothing in namespace {namespace!r} matches\n")
    for item in items:
        await sys.write(f"{item.score:.2f}  {item.id}  {item.text}\n")


async def add(sys: Sys, text: str, namespace: str = SHELL_NAMESPACE) -> None:
    await sys.write(f"remembered as {await sys.remember(text, namespace=namespace)} in {namespace!r}\n")


async def tools(sys: Sys) -> None:
    list_tools = getattr(sys, "list_tools", None)
    if list_tools is None:
        await sys.write("tools are not available yet: the tools subsystem has not landed\n")
        return
    try:
        specs = await list_tools()
    except SyscallError as exc:
        await sys.write(f"no tools: {exc}\n")
        return
    if not specs:
        await sys.write("no tools are installed\n")
    for spec in specs:
        await sys.write(f"{spec.name:<20} {spec.source or '-':<12} {spec.description}\n")
