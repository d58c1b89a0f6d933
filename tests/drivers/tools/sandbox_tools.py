"""Misbehaving tools for the sandbox tests. A sandbox child imports this file by path."""

from __future__ import annotations

import os
import time

from llmos.drivers.tools import tool


@tool(trusted=False, memory_mb=64)
def hog(megabytes: int) -> int:
    """Allocate `megabytes` of memory and keep it."""
    block = bytearray(megabytes * 2**20)
    return len(block)


@tool(trusted=False, cpu_s=1, timeout=20)
def spin() -> int:
    """Spin forever on the CPU."""
    n = 0
    while True:
        n += 1


@tool(trusted=False)
def read_env(name: str) -> str | None:
    """Read an environment variable (a secret, if the sandbox let it through)."""
    return os.environ.get(name)


@tool(trusted=False)
def where() -> dict:
    """The working folder and HOME the tool runs with."""
    return {"cwd": os.getcwd(), "home": os.environ.get("HOME")}


@tool(trusted=False, timeout=1)
def sleepy(seconds: float) -> str:
    """Sleep (wall time, little CPU)."""
    time.sleep(seconds)
    return "woke"


@tool(trusted=False)
def add(a: int, b: int) -> int:
    """Add two integers in the sandbox."""
    return a + b


@tool(trusted=False)
def boom() -> None:
    """Raise."""
    raise RuntimeError("kaboom")
