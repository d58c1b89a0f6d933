"""The child side of a sandboxed tool call. Standard library only, run as a script
(`python -I sandbox_worker.py`), so a tool that needs nothing else starts in milliseconds.

Protocol: one JSON request on stdin (the tool's module, file and qualname, its arguments,
its caller's context, the limits, the parent's sys.path); one JSON reply on the original
stdout: {"ok": true, "value": ...} or {"ok": false, "type", "message", "code", "limit"}.
Whatever the tool prints goes to stderr. The limits are set after the tool's module is
imported and count from there: CPU seconds, address space added, bytes written to files,
processes. In a jail that bwrap set up as root (LLMOS_JAIL_UID set), the worker first
becomes that user, giving up the two capabilities the jail left it, before it reads anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import resource
import sys
from typing import Any


def load(request: dict[str, Any]) -> Any:
    module_name, file = request["module"], request.get("file")
    try:
        if file and os.path.realpath(file) == os.path.realpath(__file__):  # run_python: no package to import
            module = sys.modules[__name__]
        elif module_name == "__main__":  # a script's own tools: only its file can say where they are
            raise ImportError(module_name)
        else:
            module = importlib.import_module(module_name)
    except ImportError:
        if not file:
            raise
        spec = importlib.util.spec_from_file_location(f"_llmos_tool_{abs(hash(file))}", file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    target: Any = module
    for part in request["qualname"].split("."):
        target = getattr(target, part)
    return target


def address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def drop_privileges() -> None:
    """Become LLMOS_JAIL_UID (with no groups) if the jail says: from root to nobody, every
    capability is gone, and RLIMIT_NPROC counts (root is exempt from it)."""
    uid = os.environ.get("LLMOS_JAIL_UID")
    if uid:
        os.setgroups([])
        os.setresgid(int(uid), int(uid), int(uid))
        os.setresuid(int(uid), int(uid), int(uid))


def set_limits(cpu_s: float, memory_mb: int, file_mb: int, processes: int | None = None) -> None:
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime + cpu_s + 0.999)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # soft: SIGXCPU; hard, a second on: SIGKILL
    memory = address_space() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 2**20, file_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if processes is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))


def call(target: Any, arguments: dict[str, Any], context: dict[str, Any]) -> Any:
    entry = getattr(target, "sandbox_entry", None)  # an llmos Tool validates and converts for itself
    if entry is not None:
        return entry(arguments, context)
    value = target(**arguments)
    return asyncio.run(value) if inspect.isawaitable(value) else value


def failure(exc: BaseException) -> dict[str, Any]:
    reply = {"ok": False, "type": type(exc).__name__, "message": getattr(exc, "message", None) or str(exc)}
    if isinstance(exc, MemoryError):
        reply["limit"] = "memory"
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        reply["code"] = int(code)
    return reply


def encode(reply: dict[str, Any], max_bytes: int) -> bytes:
    try:
        data = json.dumps(reply).encode()
    except (TypeError, ValueError) as exc:
        data = json.dumps(failure(TypeError(f"the tool's result is not JSON-able: {exc}"))).encode()
    if len(data) > max_bytes:
        data = json.dumps({"ok": False, "type": "OutputTooLarge", "limit": "output",
                           "message": f"the tool's result is {len(data)} bytes, over the limit of {max_bytes}"}).encode()
    return data


def main() -> None:
    drop_privileges()
    request = json.load(sys.stdin)
    result = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the tool's prints go to stderr; stdout carries only the reply
    sys.path[:0] = [path for path in request["sys_path"] if path not in sys.path]
    try:
        target = load(request)
        set_limits(request["cpu_s"], request["memory_mb"], request["file_mb"], request.get("processes"))
        reply = {"ok": True, "value": call(target, request["arguments"], request["context"])}
    except BaseException as exc:  # noqa: BLE001 - everything the tool raises goes back to the caller
        reply = failure(exc)
    result.write(encode(reply, request["max_output"]))
    result.flush()
    sys.stderr.flush()
    os._exit(0)  # the reply is out: no interpreter teardown for the caller to wait on


# -- run_python: the built-in tool whose body runs here, with nothing imported ---------------------
def run_python(code: str) -> dict[str, Any]:
    """Run Python code in a sandbox and return what it printed and the value of its last
    line if that line is an expression (as an interactive interpreter would show it).

    Args:
        code: the Python source to run
    """
    import ast

    tree = ast.parse(code, mode="exec")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    namespace: dict[str, Any] = {"__name__": "__main__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(tree, "<tool>", "exec"), namespace)  # noqa: S102 - the sandbox is the point
        value = eval(compile(ast.Expression(last.value), "<tool>", "eval"), namespace) if last else None  # noqa: S307
    return {"stdout": printed.getvalue(), "result": None if value is None else repr(value)}


if __name__ == "__main__":
    main()
