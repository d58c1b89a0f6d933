"""Capability names and the one rule that matches them.

A capability is a dotted name; a granted name ending in ".*" grants every name below it,
and "*" grants everything. A child's capabilities are always a subset of its parent's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

ALL = "*"
PROC_SPAWN = "proc.spawn"  # create child processes
PROC_ADMIN = "proc.admin"  # control processes that are not yourself or your descendants; raise priority
# Spawn an app from a Python file ("path/app.py:main"): the file may be one a process wrote
# (write_file), so this is running any code, and no app has it unless granted.
PROC_EXEC = "proc.exec"
IPC = "ipc"  # send and receive messages
MODEL_GENERATE = "model.generate"  # use the model (chat, generate)
# Change the model library (import, create, cp, rm, default, add, pull): the kernel's LLMOS_HOME
# for every user of it. Listing and showing models need nothing.
MODELS_ADMIN = "models.admin"
MEMORY = "memory"  # remember, recall and forget in the process's own namespace
# Another process's namespace NS: "memory.read.NS" to recall from it, "memory.write.NS" to
# remember into it or forget from it; "memory.read.*" reads every namespace.
MEMORY_READ, MEMORY_WRITE = "memory.read", "memory.write"
CONSOLE = "console"  # write to the user's terminal and ask the user questions
NET = "net"  # reach the network from a jailed tool (without it, the jail has no network)
# Tool NAME: "tool.NAME" to call it; "tool.*" every tool, "tool.SERVER.*" every tool of an
# MCP server (its tools are named "SERVER.TOOL").
TOOL = "tool"
# The built-in tools every app may call unless told otherwise: the ones that change nothing
# and reach nothing outside the caller's workspace. Tools that write files (write_file), run
# code (run_python), reach the network, and plugin and MCP tools need their own grant
# (`llmos run --allow tool.NAME ...`, the shell's `run --allow`, `caps=` of spawn).
DEFAULT_TOOLS = frozenset(f"{TOOL}.{name}" for name in ("calculator", "current_time", "read_file", "list_files"))

# What `llmos run`, the shell and the process API grant an app unless told otherwise, the
# least the seed apps need: the model, their own memories, messages, children (never more
# than this), the console, and the tools above.
DEFAULT_APP = frozenset({PROC_SPAWN, IPC, MODEL_GENERATE, CONSOLE, MEMORY}) | DEFAULT_TOOLS


class Control(NamedTuple):
    """Needed to act on process `pid`: held by the process itself and its ancestors, and by
    whoever holds PROC_ADMIN. The dispatcher resolves it against the process table: a pid
    it does not know is ESRCH, or with `gone_ok` (the call reads what outlives a process,
    its trace) needs PROC_ADMIN."""

    pid: int
    gone_ok: bool = False


Need = str | Control  # what a request may need: a capability name, or control of a process


def grants(granted: Iterable[str], wanted: str) -> bool:
    """True if the set `granted` includes capability `wanted`, directly or by wildcard."""
    granted = set(granted)
    if ALL in granted or wanted in granted:
        return True
    parts = wanted.split(".")
    return any(".".join(parts[:i]) + ".*" in granted for i in range(1, len(parts)))


def narrow(parent: frozenset[str], asked: Iterable[str] | None) -> frozenset[str]:
    """The capabilities a child gets: what was asked, limited to what the parent has."""
    if asked is None:
        return parent
    return frozenset(c for c in asked if grants(parent, c))
