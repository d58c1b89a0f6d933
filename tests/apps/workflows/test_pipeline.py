"""pipeline: outputs feed forward; the human step approves, stops or edits."""

from __future__ import annotations

import pytest

from llmos.apps.workflows import pipeline
from llmos.testing import FakeDriver, ScriptedConsole, result, run_app

STEPS = [{"name": "upper", "prompt": "UP {input}"}, {"ask": "Go on?"}, {"name": "wrap", "prompt": "WRAP {input}"}]


def script(prompt: str) -> str:
    return prompt.removeprefix("<user>").removesuffix("\n<assistant>").replace(" ", "_")


@pytest.mark.parametrize(("answer", "output", "steps"), [
    ("yes", "WRAP_UP_x", ["upper", "wrap"]),
    ("", "WRAP_UP_x", ["upper", "wrap"]),
    ("no", "UP_x", ["upper"]),
    ("edited", "WRAP_edited", ["upper", "user", "wrap"]),
])
async def test_each_output_feeds_the_next_and_the_user_decides(answer, output, steps):
    console = ScriptedConsole(answer)
    out = result(await run_app(pipeline, STEPS, "x", driver=FakeDriver(script), console=console))
    assert out["output"] == output and [s["step"] for s in out["steps"]] == steps
    assert console.questions[0][1] == "Go on? [yes/no/or type a replacement] "
    assert console.text.startswith("[upper] UP_x\n")
    assert ("stopped_at" in out) == (answer == "no")


async def test_an_input_step_asks_for_the_text():
    console = ScriptedConsole("bananas")
    steps = [{"ask": "Topic?", "kind": "input"}, {"name": "upper", "prompt": "UP {input}"}]
    out = result(await run_app(pipeline, steps, "", driver=FakeDriver(script), console=console))
    assert out["output"] == "UP_bananas"


async def test_agents_publish_their_turns_on_the_topic():
    async def watcher(sys):  # noqa: ANN001
        await sys.subscribe("t")
        pid = (await sys.spawn(pipeline, STEPS[:1], "x", "t")).pid
        await sys.wait(pid)
        return (await sys.recv(timeout=1)).payload

    got = result(await run_app(watcher, driver=FakeDriver(script), console=ScriptedConsole()))
    assert got["agent"] == "upper" and got["output"] == "UP_x"
