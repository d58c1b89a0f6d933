"""The compute thread: every tensor computation of the process runs on one thread."""

from __future__ import annotations

import contextvars
import threading

import anyio
import pytest

from llmos.drivers import compute

REQUEST = contextvars.ContextVar("request", default="unset")


def test_calls_from_any_thread_run_on_the_same_thread():
    seen = set()
    caller = threading.Thread(target=lambda: seen.add(compute.call(threading.get_ident)))
    caller.start()
    caller.join()
    seen.add(compute.call(threading.get_ident))
    assert len(seen) == 1 and threading.get_ident() not in seen


def test_the_callers_context_variables_come_along():
    token = REQUEST.set("float32")
    try:
        assert compute.call(REQUEST.get) == "float32"
    finally:
        REQUEST.reset(token)


def test_a_call_from_the_compute_thread_runs_in_place():
    # e.g. a model loaded on the compute thread that embeds text: no deadlock
    assert compute.call(lambda: compute.call(compute.on_compute_thread))


def test_errors_reach_the_caller():
    def fail() -> None:
        raise ValueError("bad weights")

    with pytest.raises(ValueError, match="bad weights"):
        compute.call(fail)


def test_the_event_loop_goes_on_while_the_compute_thread_works():
    ticks = []

    async def main() -> int:
        async with anyio.create_task_group() as tg:
            async def tick() -> None:
                for _ in range(5):
                    ticks.append(1)
                    await anyio.sleep(0.01)

            tg.start_soon(tick)
            return await compute.run(lambda: (threading.Event().wait(0.2), threading.get_ident())[1])

    ident = anyio.run(main)
    assert ident == compute.call(threading.get_ident) and len(ticks) == 5


def test_a_cancelled_caller_waits_for_the_work_to_finish():
    # an engine step, once started, completes: the kernel's books must see its outcome
    done = []

    async def main() -> bool:
        with anyio.move_on_after(0.05):
            await compute.run(lambda: (threading.Event().wait(0.2), done.append(1)))
        return bool(done)

    assert anyio.run(main)
