"""mapreduce: workers at once, results by message to the reducer, in part order."""

from __future__ import annotations

from llmos.apps.workflows import mapreduce
from llmos.syscalls import ProcState
from llmos.testing import FakeDriver, ScriptedConsole, result, run_app

MAP = {"name": "m", "prompt": "M {input}"}
REDUCE = {"name": "r", "prompt": "R {input}"}


def script(prompt: str) -> str:
    return prompt.removeprefix("<user>").removesuffix("\n<assistant>").replace("\n", "|")


async def test_workers_fan_out_and_one_reducer_combines():
    driver = FakeDriver(script)
    out = result(await run_app(mapreduce, MAP, REDUCE, ["a", "b", "c"], driver=driver, console=ScriptedConsole()))
    assert out["mapped"] == ["M a", "M b", "M c"]
    assert out["output"] == "R 1. M a|2. M b|3. M c"
    assert len(driver.batches[0]) == 3  # the three workers were decoded together


async def test_a_failing_worker_fails_the_workflow_and_ends_the_reducer():
    def script_failing(prompt: str) -> str:
        raise RuntimeError("worker broke")

    status = await run_app(mapreduce, MAP, REDUCE, ["a"], driver=FakeDriver(script_failing))
    assert status.state is ProcState.FAILED and "agent m-1" in status.reason
