"""LLMOS: sync calls run as processes on a kernel in a background thread, batched together."""

from __future__ import annotations

import threading

import pytest

import llmos
from llmos.runtime import LLMOS, AppFailed
from llmos.syscalls import InvalidRequest
from llmos.testing import FakeDriver


@pytest.fixture
def runtime():
    with LLMOS() as rt:
        yield rt


def test_model_methods_run_the_seed_apps(runtime):
    driver = FakeDriver()
    model = llmos.Model(driver, runtime=runtime)
    driver.enqueue(" Hello, world!", "```python\nprint(1)", "A summary.")
    assert model.translate("你好，世界！", target_lang="en") == "Hello, world!"
    assert model.codegen("print one") == "print(1)"
    assert model.summarize("Some text.") == "A summary."
    assert model.chat("hi") == "echo: hi"
    assert model.generate_text("raw ") == "echo: raw "


def test_an_app_error_is_raised_in_the_caller(runtime):
    model = llmos.Model(FakeDriver(), runtime=runtime)
    with pytest.raises(InvalidRequest, match="unknown target language"):
        model.translate("hi", target_lang="xx")


def test_a_killed_app_is_app_failed(runtime):
    async def doomed(sys):  # noqa: ANN001
        await sys.kill(sys.pid, "gone")

    with pytest.raises(AppFailed, match="KILLED: gone"):
        llmos.Model(FakeDriver(), runtime=runtime).run(doomed)


def test_calls_from_many_threads_are_batched(runtime):
    driver = FakeDriver(step_delay_s=0.01)
    model = llmos.Model(driver, runtime=runtime)
    replies: list[str] = []
    threads = [threading.Thread(target=lambda i=i: replies.append(model.chat(f"q{i}"))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(replies) == [f"echo: q{i}" for i in range(4)]
    assert max(len(b) for b in driver.batches) > 1


def test_one_kernel_per_driver_and_close_ends_them(runtime):
    a, b = FakeDriver(), FakeDriver()
    assert runtime.kernel(a) is runtime.kernel(a) and runtime.kernel(a) is not runtime.kernel(b)
    runtime.close()
    runtime.close()  # idempotent
    assert llmos.Model(a, runtime=runtime).chat("again") == "echo: again"  # a closed runtime starts anew
