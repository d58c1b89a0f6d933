"""Fixtures for durable processes: app files another OS process can import, and a kernel
run in a subprocess (same LLMOS_HOME) that dies mid-run, as a crashed kernel does.

A durable process's app must be importable by reference, so every app here is a .py file
written into the test's `tmp_path` and named "/abs/path/app.py:main". A kernel that
crashes is a child Python process: it boots over a FakeDriver (or a named model), spawns
one durable process, and then either the app itself ends the OS process with
`os._exit(9)` once it sees CRASH_ENV (set for the child only: the kernel that resumes the
process in the test does not have it), or the test SIGKILLs it when a condition holds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

CRASH_ENV = "LLMOS_TEST_CRASH"  # apps call os._exit(9) at their crash point while this is set

_KERNEL_SCRIPT = r'''
import importlib.util, json, os, sys
import anyio
import llmos
from llmos.kernel.durable import RestartPolicy
from llmos.testing import FakeDriver

spec = json.loads(sys.argv[1])

def load(ref):
    path, _, attr = ref.rpartition(":")
    module_spec = importlib.util.spec_from_file_location(f"durable_test_tools_{abs(hash(path)):x}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, attr)

async def main():
    if spec["model"] is None:
        model = FakeDriver(step_delay_s=spec["step_delay_s"])
        model.enqueue(*spec["replies"])
    else:
        model = spec["model"]
    tools = [load(ref) for ref in spec["tools"]]
    async with llmos.boot(model, memory=None, mcp_servers=None, embedder=None, tools=tools) as kernel:
        restart = RestartPolicy(**spec["restart"]) if spec["restart"] else None
        info = await kernel.spawn(spec["app"], *spec["args"], durable=True, restart=restart, caps=spec["caps"])
        with open(spec["id_file"] + ".part", "w") as out:
            out.write(info.durable_id)
        os.replace(spec["id_file"] + ".part", spec["id_file"])
        status = await kernel.durability.wait(info.durable_id, timeout=spec["timeout"])
        print("ENDED", status.state.name, status.reason, flush=True)

anyio.run(main)
'''


class Apps:
    """App files in one folder (a test's tmp_path)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def write(self, name: str, source: str) -> str:
        """Write an app file and return its reference, "/abs/path/NAME.py:main"."""
        path = self.folder / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return f"{path}:main"

    @staticmethod
    def rewrite(ref: str, source: str) -> None:
        """Change an app file's code (a new mtime too, so any loader sees the change)."""
        path = Path(ref.rpartition(":")[0])
        before = path.stat().st_mtime_ns
        path.write_text(textwrap.dedent(source))
        if path.stat().st_mtime_ns == before:
            os.utime(path, ns=(before + 1_000_000, before + 1_000_000))

    @staticmethod
    def attribute(ref: str) -> Any:
        """`attr` of the file in "path.py:attr" (a tool defined beside an app), loaded anew."""
        path, _, attr = ref.rpartition(":")
        spec = importlib.util.spec_from_file_location(f"durable_test_tools_{abs(hash(path)):x}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, attr)


class KernelProcess:
    """A kernel running in a child Python process, with the durable process it spawned."""

    def __init__(self, child: subprocess.Popen, id_file: Path, log_path: Path) -> None:
        self.child = child
        self.id_file = id_file
        self.log_path = log_path

    @property
    def output(self) -> str:
        """What it printed (its log), all of it."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def durable_id(self, timeout: float = 30.0) -> str:
        """The id of its durable process, once it has started (blocking)."""
        deadline = time.monotonic() + timeout
        while not (self.id_file.exists() and self.id_file.read_text()):
            assert self.child.poll() is None, f"the child kernel ended before its durable process started:\n{self.output[-4000:]}"
            assert time.monotonic() < deadline, f"the child kernel's durable process did not start:\n{self.output[-4000:]}"
            time.sleep(0.01)
        return self.id_file.read_text()

    def wait(self, timeout: float) -> int:
        """Its exit code, once it has ended (killed if it has not within `timeout` s)."""
        try:
            return self.child.wait(timeout=timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()


class CrashedKernel:
    """Runs kernels in child Python processes (see the module's docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runs = 0
        self.started: list[KernelProcess] = []

    def start(self, app: str, *args: Any, tools: Sequence[str] = (), restart: dict[str, Any] | None = None,
              model: str | None = None, replies: Sequence[str] = (), step_delay_s: float = 0.0,
              timeout: float = 60.0, crash: bool = True, caps: Sequence[str] | None = None) -> KernelProcess:
        """Boot a kernel in a child process that spawns `app(*args)` as a durable process and
        waits for it to end (at most `timeout` s). `crash`: CRASH_ENV is set in the child.
        `tools`: "path.py:attr" references of tools to boot with; `model`: a model's name
        (default: a FakeDriver answering `replies` first, each step taking `step_delay_s`);
        `caps`: the durable process's capabilities (default: all)."""
        self.runs += 1
        id_file = self.folder / f"kernel-{self.runs}.id"
        log_path = self.folder / f"kernel-{self.runs}.log"
        spec = {"app": app, "args": list(args), "tools": list(tools), "restart": restart, "model": model,
                "replies": list(replies), "step_delay_s": step_delay_s, "id_file": str(id_file), "timeout": timeout,
                "caps": None if caps is None else list(caps)}
        env = {**os.environ, **({CRASH_ENV: "1"} if crash else {})}
        with open(log_path, "wb") as log:
            child = subprocess.Popen([sys.executable, "-c", _KERNEL_SCRIPT, json.dumps(spec)], env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        kernel = KernelProcess(child, id_file, log_path)
        self.started.append(kernel)
        return kernel

    def __call__(self, app: str, *args: Any, kill_when: Callable[[], bool] | None = None, timeout: float = 60.0,
                 **options: Any) -> str:
        """Run `app(*args)` as a durable process in a kernel in a child process, and return its
        durable id once that kernel has died: by the app's own os._exit(9) (at the point it
        chooses, while CRASH_ENV is set), or, with `kill_when`, by SIGKILL as soon as
        `kill_when()` holds. `options`: as `start` takes them."""
        kernel = self.start(app, *args, timeout=timeout, **options)
        deadline = time.monotonic() + timeout
        try:
            if kill_when is not None:
                while not kill_when():
                    if kernel.child.poll() is not None or time.monotonic() > deadline:
                        break
                    time.sleep(0.005)
                else:
                    kernel.child.kill()
            code = kernel.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            kernel.stop()
        expected = -9 if kill_when is not None else 9
        assert code == expected, f"the child kernel ended with {code}, not {expected} (a crash):\n{kernel.output[-4000:]}"
        assert kernel.id_file.exists(), f"the child kernel died before its durable process started:\n{kernel.output[-4000:]}"
        return kernel.id_file.read_text()

    def stop_all(self) -> None:
        for kernel in self.started:
            kernel.stop()


@pytest.fixture
def crashed_kernel(tmp_path: Path) -> Iterator[CrashedKernel]:
    kernels = CrashedKernel(tmp_path)
    yield kernels
    kernels.stop_all()  # none outlives its test


@pytest.fixture
def apps(tmp_path: Path) -> Apps:
    return Apps(tmp_path)
