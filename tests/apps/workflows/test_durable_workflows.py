"""Durable workflows: `durable = true` in a workflow file makes the workflow and each of its
agents durable processes (pipeline and supervisor); debate and mapreduce refuse it. A
durable pipeline whose kernel dies (a child Python process, killed mid-run) goes on at the
next boot without asking the model again what it already answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import llmos
from llmos.apps import registry
from llmos.apps.workflows import spec
from llmos.apps.workflows.agent import WorkflowError
from llmos.syscalls import DurableState, ProcState
from llmos.testing import FakeDriver, ScriptedConsole, result, run_app, spawn_and_wait

BOOT: dict[str, Any] = {"memory": None, "mcp_servers": None, "embedder": None}
WORKFLOW_APP = "llmos.apps.workflows.spec:main"
AGENT_APP = "llmos.apps.workflows.agent:agent"

PIPELINE = """
name = "shout"
pattern = "pipeline"
input = "x"
{durable}

[[steps]]
name = "upper"
prompt = "UP {{input}}"

[[steps]]
name = "wrap"
prompt = "WRAP {{input}}"
"""

SUPERVISOR = """
name = "desk"
pattern = "supervisor"
tasks = ["12 times 3?", "a haiku"]
handoffs = true
{durable}

[[specialists]]
name = "math"
description = "arithmetic"
system = "calc"

[[specialists]]
name = "poet"
description = "poems and haiku"
system = "poet"
"""


def pipeline_script(prompt: str) -> str:
    return prompt.removeprefix("<user>").removesuffix("\n<assistant>").replace(" ", "_")


def write_workflow(folder: Path, name: str, template: str, durable: bool) -> str:
    path = folder / f"{name}.toml"
    path.write_text(template.format(durable="durable = true" if durable else ""))
    return str(path)


async def run_workflow(file: str, script: Any) -> tuple[Any, str, list[Any], FakeDriver]:
    """`llmos run workflow FILE` on a fresh kernel over FakeDriver(script): the workflow's
    result, what it wrote, the durable processes the kernel knows of after it, the driver."""
    driver = FakeDriver(script)
    console = ScriptedConsole()
    async with llmos.boot(driver, **BOOT) as kernel:
        kernel.console = console
        main = registry.bind("workflow", [file], {})
        status = await spawn_and_wait(kernel, main, file, name="workflow", timeout=30)
        listed = await kernel.durability.list() if kernel.durability.started else []
    return result(status), console.text, listed, driver


# -- durable = true runs as without it, its agents durable ---------------------------------------------
async def test_a_durable_pipeline_gives_what_an_ordinary_one_gives_and_its_agents_are_durable(tmp_path):
    plain, plain_text, plain_listed, _ = await run_workflow(
        write_workflow(tmp_path, "plain", PIPELINE, durable=False), pipeline_script)
    durable, durable_text, listed, driver = await run_workflow(
        write_workflow(tmp_path, "durable", PIPELINE, durable=True), pipeline_script)

    assert plain == {"output": "WRAP_UP_x", "steps": [{"step": "upper", "output": "UP_x"},
                                                      {"step": "wrap", "output": "WRAP_UP_x"}]}
    assert durable == plain
    assert plain_listed == []  # an ordinary workflow records nothing
    assert plain_text == "[upper] UP_x\n[wrap] WRAP_UP_x\n"
    first, _, rest = durable_text.partition("\n")  # the durable run says which durable process it is
    workflow = next(d for d in listed if d.app == WORKFLOW_APP)
    assert first == f"[durable workflow {workflow.id}]"
    assert rest == plain_text
    assert len(driver.prompts) == 2  # each agent asked the model once

    assert sorted((d.name, d.app) for d in listed) == [("shout", WORKFLOW_APP), ("upper", AGENT_APP),
                                                       ("wrap", AGENT_APP)]
    assert all(d.state is DurableState.EXITED and d.restarts == 0 for d in listed), listed
    agents = {d.name: d for d in listed if d.app == AGENT_APP}
    assert all(a.steps >= 1 for a in agents.values())  # the chat (and the publish) recorded


async def test_a_durable_supervisor_gives_what_an_ordinary_one_gives(tmp_path, script):
    plain, plain_text, _, _ = await run_workflow(
        write_workflow(tmp_path, "plain", SUPERVISOR, durable=False), script)
    durable, durable_text, listed, _ = await run_workflow(
        write_workflow(tmp_path, "durable", SUPERVISOR, durable=True), script)
    assert [r["route"] for r in plain["results"]] == [["math"], ["poet"]]
    assert durable == plain
    assert durable_text.partition("\n")[2] == plain_text
    # The workflow, and one agent per task (each routed right: no hand-off).
    assert sorted(d.name for d in listed) == ["desk", "math", "poet"]
    assert all(d.state is DurableState.EXITED for d in listed)


# -- patterns that cannot be durable -------------------------------------------------------------------
DEBATE = """
pattern = "debate"
durable = true
[writer]
name = "w"
[critic]
name = "c"
"""

MAPREDUCE = """
pattern = "mapreduce"
durable = true
parts = ["a", "b"]
[map]
name = "m"
[reduce]
name = "r"
"""


@pytest.mark.parametrize(("pattern", "text"), [("debate", DEBATE), ("mapreduce", MAPREDUCE)])
async def test_debate_and_mapreduce_refuse_durable(tmp_path, pattern, text):
    path = tmp_path / f"{pattern}.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(WorkflowError, match=f"a {pattern} workflow cannot be durable"):
        spec.load(path)
    status = await run_app("workflow", str(path), "input", driver=FakeDriver())
    assert status.state is ProcState.FAILED
    assert f"a {pattern} workflow cannot be durable" in status.reason and "WorkflowError" in status.reason


def test_durable_false_is_the_default_and_yaml_takes_it_too(tmp_path):
    (tmp_path / "w.yaml").write_text("pattern: pipeline\ndurable: true\nsteps:\n  - name: a\n")
    assert spec.load(tmp_path / "w.yaml").durable is True
    assert spec.load("story").durable is False


# -- a kernel that dies mid-pipeline ---------------------------------------------------------------------
CRASH_ENV = "LLMOS_TEST_WORKFLOW_CRASH"

# A kernel in a child Python process runs the workflow file; its model's script ends the
# OS process (as kill -9 would) when the second agent asks it, if CRASH_ENV is set.
_CHILD = r'''
import json, os, sys
import anyio
import llmos
from llmos.apps import registry
from llmos.testing import FakeDriver

spec = json.loads(sys.argv[1])

def script(prompt):
    body = prompt.removeprefix("<user>").removesuffix("\n<assistant>")
    if body.startswith("WRAP") and os.environ.get(spec["crash_env"]):
        os._exit(9)
    return body.replace(" ", "_")

class Console:
    def write(self, pid, text):
        sys.stdout.write(text)
        sys.stdout.flush()

    async def ask(self, pid, question):
        raise EOFError

async def main():
    async with llmos.boot(FakeDriver(script), memory=None, mcp_servers=None, embedder=None) as kernel:
        kernel.console = Console()
        app = registry.bind("workflow", [spec["file"]], {})
        proc = await kernel.spawn(app, spec["file"], name="workflow")
        status = await kernel.wait(proc.pid, timeout=60)
        print("ENDED", status.state.name, status.reason, flush=True)

anyio.run(main)
'''


async def test_a_durable_pipeline_resumes_after_its_kernel_dies_without_asking_the_model_again(tmp_path):
    file = write_workflow(tmp_path, "durable", PIPELINE, durable=True)
    log = tmp_path / "child.log"
    with open(log, "wb") as out:
        child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({"file": file, "crash_env": CRASH_ENV})],
                               stdout=out, stderr=subprocess.STDOUT, env={**os.environ, CRASH_ENV: "1"},
                               timeout=60)
    printed = log.read_text()
    assert child.returncode == 9, printed  # died as the second agent asked the model
    assert "[upper] UP_x\n" in printed and "[wrap]" not in printed and "ENDED" not in printed

    driver = FakeDriver(pipeline_script)
    console = ScriptedConsole()
    async with llmos.boot(driver, **BOOT) as kernel:
        kernel.console = console
        listed = {d.name: d for d in await kernel.durability.list()}
        workflow = listed["shout"]
        assert set(kernel.durability.resumed) == {workflow.id, listed["wrap"].id}  # upper had ended
        status = await kernel.durability.wait(workflow.id, timeout=30)
        after = {d.name: d for d in await kernel.durability.list()}
    assert result(status) == {"output": "WRAP_UP_x", "steps": [{"step": "upper", "output": "UP_x"},
                                                               {"step": "wrap", "output": "WRAP_UP_x"}]}
    assert listed["upper"].state is DurableState.EXITED
    # Only the second agent's question reached the model: the first agent's answer came from its record.
    assert driver.prompts == ["<user>WRAP UP_x\n<assistant>"]
    # And what the workflow had written before the crash is not written again.
    assert console.text == "[wrap] WRAP_UP_x\n"
    assert all(d.state is DurableState.EXITED for d in after.values()), after
