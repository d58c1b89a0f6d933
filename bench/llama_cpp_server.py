"""llama-cpp-python's OpenAI server, `python -m llama_cpp.server` with the same arguments,
and two more, for a fair measure of it under concurrent clients:

--no-extra-buffers: load the model without llama.cpp's extra buffer types (see
  common.llama_cpp_extra_buffers_crash: the AMX one crashes the build installed here).
--one-model-thread: make every call into the model from one and the same thread. As shipped,
  the server runs each call on whichever worker thread of starlette's pool is free; once
  concurrent requests have used several, ggml's OpenMP (libgomp) has a team of threads per
  caller, more threads than cores, and libgomp stops spinning at its barriers: on 2 cores
  the server decodes at half speed from then on, even for one client alone (the trap
  llmos's compute thread avoids, see drivers/compute.py). The server serves one request at
  a time under a lock anyway, so this changes which thread runs the model, not the order.

    .venv/bin/python bench/llama_cpp_server.py --no-extra-buffers --one-model-thread --model M.gguf --port 8001 ...
"""
from __future__ import annotations

import asyncio
import functools
import runpy
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from common import llama_cpp_without_extra_buffers

T = TypeVar("T")


def model_calls_on_one_thread() -> None:
    """Swap the server's run_in_threadpool / iterate_in_threadpool (starlette's) for ones
    that use a single worker thread."""
    from llama_cpp.server import app

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-model")
    end = object()

    async def run_in_threadpool(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args, **kwargs))

    async def iterate_in_threadpool(iterator: Iterable[T]) -> AsyncIterator[T]:
        items = iter(iterator)
        while (item := await run_in_threadpool(next, items, end)) is not end:
            yield item  # type: ignore[misc]

    app.run_in_threadpool = run_in_threadpool  # type: ignore[assignment]
    app.iterate_in_threadpool = iterate_in_threadpool


def take_flag(name: str) -> bool:
    if name in sys.argv:
        sys.argv.remove(name)
        return True
    return False


if __name__ == "__main__":
    if take_flag("--no-extra-buffers"):
        llama_cpp_without_extra_buffers()
    if take_flag("--one-model-thread"):
        model_calls_on_one_thread()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
