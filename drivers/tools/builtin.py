"""The built-in tools, a plugin like any other (see llmos.hookspecs): calculator, current
time, files in the caller's workspace folder, and a Python runner in the sandbox."""

from __future__ import annotations

import ast
import datetime
import hashlib
import math
import operator
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmos.drivers.tools import sandbox_worker
from llmos.drivers.tools.function import Tool, tool
from llmos.drivers.tools.sandbox import Limits
from llmos.kernel.errors import InvalidToolArguments, PermissionDenied
from llmos.hookspecs import hookimpl
from llmos.kernel.tools import ToolContext


MAX_READ_BYTES = 1_000_000  # read_file returns at most this much of a file
MAX_POWER_BITS = 10_000  # calculator: results of ** past this many bits are refused, not computed

# -- calculator ------------------------------------------------------------------------------------------
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    name: getattr(math, name) for name in ("sqrt", "exp", "log", "log10", "log2", "sin", "cos", "tan", "asin", "acos",
                                           "atan", "floor", "ceil", "factorial", "radians", "degrees")
} | {"abs": abs, "round": round, "min": min, "max": max}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) * max(1.0, math.log2(abs(left) or 1)) > MAX_POWER_BITS:
            raise ValueError(f"{left} ** {right} is too large to compute")
        return _BINARY[type(node.op)](left, right)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords):
        if node.func.id == "factorial" and _evaluate(node.args[0]) > 1000:
            raise ValueError("factorial of more than 1000 is too large to compute")
        return _FUNCTIONS[node.func.id](*(_evaluate(arg) for arg in node.args))
    raise ValueError(f"{ast.unparse(node)!r} is not arithmetic (numbers, + - * / // % **, parentheses, "
                     f"{', '.join(sorted(_CONSTANTS))}, {', '.join(sorted(_FUNCTIONS))})")


@tool(examples=(
    'What is 12 times 7?',
    'Calculate 15% of 240.',
    'How much is 3.5 squared plus 4?',
    'Divide 1000 by 8.',
    "What's the square root of 144?",
    'Add up 23, 45 and 67.',
), read_only=True, sends_data=False, trusted_output=True)
def calculator(expression: str) -> float | int:
    """Evaluate an arithmetic expression exactly as written, e.g. "(3 + 4) * 2 ** 10" or "sqrt(2) / 2".

    Args:
        expression: numbers with + - * / // % ** and parentheses, the constants pi, e and tau, and
            functions such as sqrt, log, sin, cos, round, abs, min, max
    """
    try:
        return _evaluate(ast.parse(expression.strip(), mode="eval"))
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError) as exc:
        raise InvalidToolArguments(f"calculator cannot evaluate {expression!r}: {exc}") from None


# -- time ------------------------------------------------------------------------------------------------
@tool(examples=(
    'What time is it?',
    "What's today's date?",
    'What day of the week is it today?',
    'What time is it in Tokyo right now?',
    'Tell me the current date and time.',
), read_only=True, sends_data=False, trusted_output=True)
def current_time(timezone: str = "UTC") -> str:
    """The current date and time, in ISO 8601 form, in a time zone.

    Args:
        timezone: an IANA time zone name such as "UTC", "Europe/Paris" or "America/New_York"
    """
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidToolArguments(f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris'") from None
    return datetime.datetime.now(zone).isoformat(timespec="seconds")


# -- files in the caller's workspace --------------------------------------------------------------------
def inside(workspace: Path, path: str) -> Path:
    """`path` (relative to the workspace) resolved, refused if it leads outside the workspace."""
    root = workspace.resolve()
    target = (root / path).resolve()  # follows symbolic links, so a link out of the workspace is refused too
    if not target.is_relative_to(root):
        raise PermissionDenied(f"{path!r} is outside this process's workspace folder; use a path inside it")
    return target


@tool(examples=(
    'Read notes.txt.',
    "Show me what's in plan.md.",
    'Open the file report.txt and tell me what it says.',
    'What does my file ideas.txt contain?',
    'Print the contents of data.csv.',
), read_only=True, sends_data=False)
def read_file(path: str, ctx: ToolContext) -> str:
    """Read a text file from your workspace folder.

    Args:
        path: the file's path relative to the workspace folder
    """
    target = inside(ctx.workspace_path, path)
    if not target.is_file():
        raise FileNotFoundError(f"no file {path!r} in the workspace")
    with target.open("rb") as handle:
        return handle.read(MAX_READ_BYTES).decode(errors="replace")


@tool(examples=(
    "Write 'hello' to greeting.txt.",
    'Save these notes in a file called meeting.md.',
    'Create a file list.txt with the items apples and pears.',
    'Add a line to diary.txt.',
    'Store this text in output.txt.',
), sends_data=False)
def write_file(path: str, content: str, ctx: ToolContext, append: bool = False) -> str:
    """Write a text file in your workspace folder (its folders are created as needed).

    Args:
        path: the file's path relative to the workspace folder
        content: the text to write
        append: add to the end of the file instead of replacing it
    """
    target = inside(ctx.workspace_path, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if append and ctx.idempotency_key:
        _append_once(target, content, _ledger(ctx))
    else:  # replacing the file is the same act however often it runs
        with target.open("a" if append else "w", encoding="utf-8") as handle:
            handle.write(content)
    return f"wrote {len(content)} characters to {path}"


def _ledger(ctx: ToolContext) -> Path:
    """Where a durable call's append notes what it does before doing it: in LLMOS_HOME's
    durable folder, outside every workspace (so no process reads or forges it), named by
    the call's key. (The notes stay: one small file per durable append.)"""
    assert ctx.idempotency_key is not None
    digest = hashlib.sha256(ctx.idempotency_key.encode()).hexdigest()[:32]
    return ctx.workspace_path.parent.parent / "durable" / "appends" / digest


def _append_once(target: Path, content: str, ledger: Path) -> None:
    """Append `content` once, even if this call runs again after a crash: the ledger keeps
    the file's size before the first attempt; a retry that finds the text already there
    does nothing, one that finds a torn write cuts it off and writes again."""
    data = content.encode("utf-8")
    if ledger.is_file():
        offset = int(ledger.read_text())
        with target.open("rb") as handle:
            handle.seek(offset)
            if handle.read(len(data)) == data:
                return
    else:
        offset = target.stat().st_size if target.exists() else 0
        ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger.write_text(str(offset))
    with target.open("r+b" if target.exists() else "wb") as handle:
        handle.truncate(offset)
        handle.seek(offset)
        handle.write(data)


@tool(examples=(
    'List the files in my workspace.',
    'What files do I have?',
    'Show the contents of the docs folder.',
    'Which files are in the projects directory?',
    'Is there a file named plan.md?',
), read_only=True, sends_data=False)
def list_files(ctx: ToolContext, path: str = ".") -> list[str]:
    """List the files and folders (ending in "/") in a folder of your workspace.

    Args:
        path: the folder, relative to the workspace folder
    """
    folder = inside(ctx.workspace_path, path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {path!r} in the workspace")
    return sorted(f"{child.name}/" if child.is_dir() else child.name for child in folder.iterdir())


# -- Python, in the sandbox -----------------------------------------------------------------------------
# It runs jailed: it reaches nothing but its workspace, nor the network unless the caller
# holds `net` (then the kernel counts it as sending data out: kernel/security.py).
run_python = Tool(sandbox_worker.run_python, trusted=False, timeout=30, limits=Limits(cpu_s=10, memory_mb=256),
                  sends_data=False,
                  examples=(
                      'Run this Python code: print(2 ** 10)',
                      'Execute this script and show the output.',
                      'Run a Python program that sorts [3, 1, 2].',
                      'What does this code print: for i in range(3): print(i)',
                      'Test this function in Python.',
                  ))

BUILTIN_TOOLS = (calculator, current_time, read_file, write_file, list_files, run_python)


@hookimpl
def register_tools(register: Callable[..., Any]) -> None:
    for builtin in BUILTIN_TOOLS:
        register(builtin)  # trusted, as built-ins are, except run_python, which says it is not
