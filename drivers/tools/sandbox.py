"""Run a tool in a child process with rlimits, a working folder of its own and an
environment stripped of secrets; the parent side of `sandbox_worker.py`.

What it contains: CPU time (RLIMIT_CPU), memory (RLIMIT_AS), file size (RLIMIT_FSIZE), the
result's size, wall time (the caller's timeout kills the child's whole process group), and
the environment (only PATH, locale and time zone pass; HOME and TMPDIR point at the
working folder). What it does not: it is no file-system or network jail; a hostile tool
can still read what the user can. Use it to contain accidents and runaway code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from llmos.kernel import errors, params
from llmos.kernel.errors import SyscallError, ToolFailed, ToolLimitExceeded

WORKER = str(Path(__file__).with_name("sandbox_worker.py"))
IN_SANDBOX = "LLMOS_IN_SANDBOX"  # set in the child: a sandbox never starts another (a script without a
# `__main__` guard, loaded by file, would otherwise start itself again and again)
PASSED_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ")  # nothing else reaches the tool


@dataclass(frozen=True)
class Limits:
    cpu_s: float = params.SANDBOX_CPU_S
    memory_mb: int = params.SANDBOX_MEMORY_MB  # address space the tool may add once its module is imported
    file_mb: int = params.SANDBOX_FILE_MB  # the largest file it may write


@dataclass(frozen=True)
class Target:
    """Where the child finds the tool: by module name, else by the module's file."""

    module: str
    qualname: str
    file: str | None = None


def scrubbed_env(workdir: str) -> dict[str, str]:
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    return env | {"HOME": workdir, "TMPDIR": workdir, "PYTHONDONTWRITEBYTECODE": "1", IN_SANDBOX: "1"}


async def run_sandboxed(target: Target, arguments: dict[str, Any], context: dict[str, Any], limits: Limits,
                        name: str) -> Any:
    """Call the tool in a fresh child process and return its JSON result, or raise what it
    raised: a SyscallError of the same class, ToolLimitExceeded or ToolFailed."""
    if os.environ.get(IN_SANDBOX):
        raise ToolFailed(f"tool {name!r} is sandboxed and cannot run from inside another sandboxed tool")
    request = {"module": target.module, "qualname": target.qualname, "file": target.file, "arguments": arguments,
               "context": context, "cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
               "max_output": params.SANDBOX_OUTPUT_BYTES, "sys_path": [p for p in sys.path if p]}
    with tempfile.TemporaryDirectory(prefix="llmos-tool-") as workdir, tempfile.TemporaryFile() as stderr:
        returncode, output = await _run(json.dumps(request).encode(), workdir, stderr)
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 2000))
        tail = stderr.read().decode(errors="replace").strip()
    return _decode(name, returncode, output, tail, limits)


async def _run(request: bytes, workdir: str, stderr: Any) -> tuple[int, bytes]:
    process = await anyio.open_process([sys.executable, "-I", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=stderr, cwd=workdir, env=scrubbed_env(workdir), start_new_session=True)
    try:
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send(request)
        await process.stdin.aclose()
        output = bytearray()
        async for chunk in process.stdout:
            output += chunk
            if len(output) > 2 * params.SANDBOX_OUTPUT_BYTES:  # the worker caps it; this is a backstop
                break
        return await process.wait(), bytes(output)
    finally:
        if process.returncode is None:  # cancelled (the call's timeout, a kill) or flooding: end the group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await process.aclose()


def _decode(name: str, returncode: int, output: bytes, stderr: str, limits: Limits) -> Any:
    if returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and not output):
        raise ToolLimitExceeded(f"tool {name!r} used its {limits.cpu_s:g} s of CPU time and was stopped", "cpu")
    try:
        reply = json.loads(output)
    except ValueError:
        detail = f"; it said: {stderr[-500:]}" if stderr else ""
        raise ToolFailed(f"tool {name!r} ended without an answer (exit status {returncode}){detail}") from None
    if reply.get("ok"):
        return reply.get("value")
    raise _error(name, reply, limits)


def _error(name: str, reply: dict[str, Any], limits: Limits) -> SyscallError:
    kind, message = reply.get("type", "Error"), reply.get("message", "")
    limit = reply.get("limit")
    if limit == "memory":
        return ToolLimitExceeded(f"tool {name!r} ran out of its {limits.memory_mb} MB of memory and was stopped", limit)
    if limit:
        return ToolLimitExceeded(f"tool {name!r}: {message}", limit)
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, SyscallError) and cls is not ToolLimitExceeded:
        return cls(message)  # a tool's own typed error (a path outside the workspace: PermissionDenied)
    return ToolFailed(f"tool {name!r} raised {kind}: {message}")
