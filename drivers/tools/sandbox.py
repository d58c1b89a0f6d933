"""Run a tool in a child process: jailed by bubblewrap (jail.py), with rlimits, an
environment stripped of secrets; the parent side of `sandbox_worker.py`.

What it contains, jailed: see jail.py (the files, the network, other processes), plus CPU
time (RLIMIT_CPU), memory (RLIMIT_AS), file size (RLIMIT_FSIZE), processes (RLIMIT_NPROC:
a fork bomb stops), the result's size, wall time (the caller's timeout kills the child's
whole process group, and the jail dies with it), and the environment (only PATH, locale and
time zone pass; HOME is the workspace). Unjailed (only where the user opted in, see
jail.check_or_refuse), the same limits in a temporary working folder: no file-system or
network jail.

Warm workers (`WarmWorkers`): a jailed worker is started before it is needed, one per
jail plan, so a call pays for sending its request and not for a new interpreter and jail.
A worker serves one call and exits: no state passes from one call to the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from llmos.drivers.tools import jail as jail_module
from llmos.drivers.tools.jail import JailPlan
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
                        name: str, jail: JailPlan | None = None, workers: WarmWorkers | None = None) -> Any:
    """Call the tool in a child process (jailed as `jail` says, else only limited; from
    `workers` if given) and return its JSON result, or raise what it raised: a SyscallError
    of the same class, ToolLimitExceeded or ToolFailed."""
    if os.environ.get(IN_SANDBOX):
        raise ToolFailed(f"tool {name!r} is sandboxed and cannot run from inside another sandboxed tool")
    request = {"module": target.module, "qualname": target.qualname, "file": target.file, "arguments": arguments,
               "context": context, "cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
               "processes": params.SANDBOX_PROCESSES, "max_output": params.SANDBOX_OUTPUT_BYTES,
               "sys_path": [p for p in sys.path if p]}
    with contextlib.ExitStack() as stack:
        if jail is not None:
            worker = await (workers.take(jail) if workers is not None else Worker.start(jail))
        else:
            worker = await Worker.start(None, stack.enter_context(tempfile.TemporaryDirectory(prefix="llmos-tool-")))
        returncode, output, tail = await worker.call(json.dumps(request).encode())
    return _decode(name, _signal_of(returncode, jailed=jail is not None), returncode, output, tail, limits)


class Worker:
    """One sandbox worker process, started and waiting for its one request on stdin."""

    def __init__(self, process: anyio.abc.Process, stderr: Any) -> None:
        self.process, self.stderr = process, stderr

    @classmethod
    async def start(cls, jail: JailPlan | None, workdir: str | None = None) -> Worker:
        argv = [sys.executable, "-I", WORKER]
        if jail is not None:
            jail_module.prepare_workspace(jail)
            argv, workdir = jail_module.command(jail, argv), jail.workspace
        assert workdir is not None
        env = scrubbed_env(workdir) | (jail_module.jail_env() | {"TMPDIR": "/tmp"} if jail is not None else {})
        stderr = tempfile.TemporaryFile()
        try:
            process = await anyio.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                               cwd=workdir, env=env, start_new_session=True)
        except BaseException:
            stderr.close()
            raise
        return cls(process, stderr)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def call(self, request: bytes) -> tuple[int, bytes, str]:
        """Send `request`; (exit status, the reply's bytes, the tail of what it printed)."""
        try:
            assert self.process.stdin is not None and self.process.stdout is not None
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self.process.stdin.send(request)  # a worker that died answers with its exit status
            await self.process.stdin.aclose()
            output = bytearray()
            async for chunk in self.process.stdout:
                output += chunk
                if len(output) > 2 * params.SANDBOX_OUTPUT_BYTES:  # the worker caps it; this is a backstop
                    break
            returncode = await self.process.wait()
            return returncode, bytes(output), self._tail()
        finally:
            await self.aclose()

    def _tail(self) -> str:
        self.stderr.seek(max(0, self.stderr.seek(0, os.SEEK_END) - 2000))
        return self.stderr.read().decode(errors="replace").strip()

    async def aclose(self) -> None:
        """End the worker's whole process group (the jail dies with bwrap) and let it go."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await self.process.aclose()
        self.stderr.close()


class WarmWorkers:
    """Jailed workers started ahead, one per jail plan, the `limit` most recently used plans
    kept. Belongs to one event loop (a kernel's); `aclose` ends them."""

    def __init__(self, limit: int = params.SANDBOX_WARM_WORKERS) -> None:
        self.limit = limit
        self._ready: OrderedDict[JailPlan, Worker] = OrderedDict()
        self.started = self.served_warm = 0
        self.closed = False

    async def take(self, jail: JailPlan) -> Worker:
        """A started worker for `jail` (the warm one if it is alive), and the next one started."""
        worker = self._ready.pop(jail, None)
        if worker is not None and not worker.alive:
            await worker.aclose()
            worker = None
        self.served_warm += worker is not None
        if worker is None:
            worker = await self._start(jail)
        try:
            await self._keep(jail, await self._start(jail))
        except BaseException:
            await worker.aclose()
            raise
        return worker

    async def _start(self, jail: JailPlan) -> Worker:
        self.started += 1
        return await Worker.start(jail)

    async def _keep(self, jail: JailPlan, worker: Worker) -> None:
        previous = self._ready.pop(jail, None)  # calls at once on one plan: one worker kept, the rest ended
        if previous is not None:
            await previous.aclose()
        if self.closed:
            await worker.aclose()
            return
        self._ready[jail] = worker
        while len(self._ready) > self.limit:
            _, oldest = self._ready.popitem(last=False)
            await oldest.aclose()

    async def aclose(self) -> None:
        self.closed = True
        while self._ready:
            _, worker = self._ready.popitem()
            await worker.aclose()


def _signal_of(returncode: int, jailed: bool) -> int | None:
    """The signal that ended the worker: Python says -N; bwrap, in between, exits 128 + N."""
    if returncode < 0:
        return -returncode
    if jailed and returncode > 128:
        return returncode - 128
    return None


def _decode(name: str, signum: int | None, returncode: int, output: bytes, stderr: str, limits: Limits) -> Any:
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL and not output):
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
