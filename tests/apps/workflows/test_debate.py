"""debate: writer and critic as long-lived processes, exchanging messages for N rounds."""

from __future__ import annotations

from llmos.apps.workflows import debate
from llmos.testing import FakeDriver, ScriptedConsole, result, run_app

WRITER = {"name": "writer", "prompt": "WRITE {input}"}
CRITIC = {"name": "critic", "prompt": "CRITIQUE {input}"}


def script(prompt: str) -> str:
    body = prompt.split("<user>")[-1].removesuffix("\n<assistant>")
    if body.startswith("WRITE"):
        return "draft0"
    if body.startswith("CRITIQUE"):
        return "shorter, " + body.split()[-1]
    return "draft" + str(int(body.split("Draft:\n")[1].split()[0][-1]) + 1)


async def test_rounds_of_critique_and_revision():
    console = ScriptedConsole()
    out = result(await run_app(debate, WRITER, CRITIC, "topic", 2, driver=FakeDriver(script), console=console))
    assert out["output"] == "draft2"
    assert out["rounds"] == [{"critique": "shorter, draft0", "draft": "draft1"},
                             {"critique": "shorter, draft1", "draft": "draft2"}]
    assert console.text.splitlines() == ["[writer] draft0", "[critic] shorter, draft0", "[writer] draft1",
                                         "[critic] shorter, draft1", "[writer] draft2"]
