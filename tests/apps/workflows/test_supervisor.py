"""supervisor: routing by `choose` (the FakeDriver scores highest the specialist its script
names), specialists at once, hand-offs followed."""

from __future__ import annotations

from llmos.apps.workflows import supervisor
from llmos.apps.workflows.agent import Agent
from llmos.apps.workflows.supervisor import handoff
from llmos.testing import FakeDriver, ScriptedConsole, result, run_app

TEAM = [{"name": "math", "description": "arithmetic", "system": "calc"},
        {"name": "poet", "description": "poems and haiku", "system": "poet"}]
AGENTS = [Agent.model_validate(s) for s in TEAM]


def test_handoff():
    assert handoff("HANDOFF: poet", AGENTS).name == "poet"
    assert handoff("handoff:Math please", AGENTS).name == "math"
    assert handoff("I will do it", AGENTS) is None and handoff("HANDOFF: chef", AGENTS) is None


async def test_tasks_are_routed_and_handed_off(script):
    console = ScriptedConsole()
    out = result(await run_app(supervisor, TEAM, ["12 times 3?", "a haiku", "haiku again"], None, True,
                               driver=FakeDriver(script), console=console))
    assert [r["route"] for r in out["results"]] == [["math"], ["poet"], ["poet"]]
    assert [r["output"] for r in out["results"]] == ["36", "rain falls", "rain falls"]


async def test_a_misrouted_task_is_handed_off(script):
    def misroute(prompt: str) -> str:
        return "math" if "which one should do this task" in prompt else script(prompt)

    out = result(await run_app(supervisor, TEAM, ["a haiku"], None, True, driver=FakeDriver(misroute),
                               console=ScriptedConsole()))
    assert out["results"][0]["route"] == ["math", "poet"] and out["results"][0]["output"] == "rain falls"
