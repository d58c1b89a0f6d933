"""The one thread on which every tensor computation of the process runs.

PyTorch's CPU backend (OpenMP, libgomp) gives each thread that starts parallel work its
own team of worker threads. Once two teams exist and together outnumber the cores,
libgomp stops spinning at its barriers and every operator pays for a sleep and a
wake-up, for as long as the process lives: on 2 cores, SmolLM2 decoding one sequence
went from ~47 to ~30 tokens/s as soon as the model had been loaded on one thread and
stepped on another. So llmos loads models, steps them and embeds text only here, and
several models take turns. Code that runs torch on a thread of its own (a test calling
`model.generate`) still works, only slower.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import anyio.to_thread

P = ParamSpec("P")
T = TypeVar("T")

_ident: list[int] = []  # the compute thread's id, once it has started


def _started() -> None:
    _ident.append(threading.get_ident())


_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmos-compute", initializer=_started)


def on_compute_thread() -> bool:
    return threading.get_ident() in _ident


def call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run fn on the compute thread, in the caller's context variables, and wait for its
    result (never from the event loop: use `run`)."""
    if on_compute_thread():
        return fn(*args, **kwargs)
    return _executor.submit(contextvars.copy_context().run, fn, *args, **kwargs).result()


async def run(fn: Callable[..., T], *args: object) -> T:
    """Run fn(*args) on the compute thread; the event loop goes on meanwhile. Once started
    the work always completes: a cancellation of the caller takes effect after it."""
    future = _executor.submit(contextvars.copy_context().run, fn, *args)
    with anyio.CancelScope(shield=True):
        if _on_asyncio():  # woken by the future itself: no thread hop
            return await asyncio.wrap_future(future)
        return await anyio.to_thread.run_sync(future.result)


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # another event loop (trio)
        return False
    return True


def cpu_flags() -> set[str]:
    """The CPU's feature flags, from /proc/cpuinfo (empty where there is none)."""
    return set(_cpuinfo_field("flags").split())


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo ("" where there is none)."""
    return _cpuinfo_field("model name")


def _cpuinfo_field(name: str) -> str:
    """The first value of `name` in /proc/cpuinfo, "" where there is none."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""
