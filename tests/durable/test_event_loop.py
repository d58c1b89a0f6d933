"""A durable process that DBOS starts by itself (resumed after a crash) runs on the kernel's
own event loop, where the kernel's processes, model and scheduler live; DBOS would run it
on a loop of its own, in another thread, had it been launched from a worker thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio

import llmos
from llmos.testing import FakeDriver

APP = """
import threading

async def main(sys):
    await sys.sleep(0.2)
    reply = await sys.chat("after the crash")  # the model's engine lives on the kernel's loop
    return [threading.get_ident(), reply.text]
"""
CRASHING_KERNEL = """
import os, sys, anyio, llmos
from llmos.testing import FakeDriver

async def main():
    async with llmos.boot(FakeDriver(step_delay_s=1.0), memory=None, mcp_servers=None, embedder=None) as kernel:
        info = await kernel.spawn(sys.argv[1], durable=True)
        print(info.durable_id, flush=True)
        await anyio.sleep(0.8)  # the sleep is recorded; the chat is under way
        os._exit(9)

anyio.run(main)
"""


async def test_a_resumed_durable_process_runs_on_the_kernels_event_loop(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    crashed = subprocess.run([sys.executable, "-c", CRASHING_KERNEL, f"{app}:main"], capture_output=True,
                             text=True, timeout=60, env=os.environ)
    assert crashed.returncode == 9, crashed.stderr
    durable_id = crashed.stdout.split()[0]

    driver = FakeDriver()
    driver.enqueue("resumed here")
    began = time.monotonic()
    async with llmos.boot(driver, memory=None, mcp_servers=None, embedder=None) as kernel:
        assert kernel.durability.resumed == [durable_id]
        with anyio.fail_after(30):
            status = await kernel.durability.wait(durable_id)
    assert status.ok, status.reason
    thread, text = status.result
    assert thread == threading.get_ident()
    assert text == "resumed here"
    assert time.monotonic() - began < 30
