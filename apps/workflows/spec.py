"""Workflows described in a small TOML or YAML file, run with `llmos run workflow FILE [INPUT]`.

    pattern = "pipeline"            # pipeline | supervisor | debate | mapreduce
    input = "a lighthouse keeper"   # the default input; a second argument overrides it
    max_tokens = 64                 # each agent's reply budget

    [[steps]]
    name = "outliner"
    prompt = "Write three bullet points for a story about {input}."

    [[steps]]
    ask = "Keep this outline?"      # human in the loop: the user approves, stops or edits

    [[steps]]
    name = "writer"
    prompt = "Write a short story from this outline:\\n{input}"

`durable = true`: the workflow and its agents are durable processes: a kernel that dies
mid-run (kill -9 included) goes on at its next boot from the last recorded step, without
asking the model again for what it already answered (pipeline and supervisor; debate and
mapreduce pass messages by pid, which do not survive a kernel, so they refuse it).

Other patterns: `supervisor` ([[specialists]] with name/description/system, `tasks` or
one task per input line, `handoffs = true`), `debate` ([writer], [critic], `rounds`),
`mapreduce` ([map], [reduce], `parts` or one part per input paragraph). Examples ship in
llmos/apps/workflows/examples/.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmos.apps.workflows.agent import AGENT_TOKENS, Agent, WorkflowError
from llmos.apps.workflows.debate import debate
from llmos.apps.workflows.mapreduce import mapreduce
from llmos.apps.workflows.pipeline import pipeline, step_of
from llmos.apps.workflows.supervisor import supervisor
from llmos.syscalls import Sys

EXAMPLES = Path(__file__).with_name("examples")
Pattern = Literal["pipeline", "supervisor", "debate", "mapreduce"]
# What each pattern must be given in its file.
REQUIRED: dict[str, tuple[str, ...]] = {
    "pipeline": ("steps",), "supervisor": ("specialists",), "debate": ("writer", "critic"),
    "mapreduce": ("map", "reduce"),
}


DURABLE_PATTERNS = ("pipeline", "supervisor")


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    pattern: Pattern
    name: str = "workflow"
    description: str = ""
    input: str | None = None
    max_tokens: int = Field(default=AGENT_TOKENS, ge=1)
    topic: str | None = None  # where agents publish their turns; "workflow:<name>" by default
    steps: list[dict[str, Any]] = []  # pipeline
    specialists: list[Agent] = []  # supervisor
    router: Agent | None = None
    handoffs: bool = False
    tasks: list[str] = []  # supervisor: else one task per line of the input
    writer: Agent | None = None  # debate
    critic: Agent | None = None
    rounds: int = Field(default=1, ge=1, le=10)
    map: Agent | None = None  # mapreduce
    reduce: Agent | None = None
    parts: list[str] = []  # mapreduce: else one part per paragraph of the input
    durable: bool = False  # the run survives the kernel (pipeline, supervisor)

    @model_validator(mode="after")
    def _complete(self) -> WorkflowSpec:
        missing = [field for field in REQUIRED[self.pattern] if not getattr(self, field)]
        if missing:
            raise ValueError(f"a {self.pattern} workflow needs {' and '.join(missing)}")
        for step in self.steps:
            step_of(step)  # each step must be an agent or a human step
        if self.durable and self.pattern not in DURABLE_PATTERNS:
            raise ValueError(f"a {self.pattern} workflow cannot be durable: its agents exchange messages by pid, "
                             f"which do not survive a kernel (durable: {', '.join(DURABLE_PATTERNS)})")
        return self


def load(path: str | Path) -> WorkflowSpec:
    """Read and check a workflow file (.toml, .yaml or .yml); a bare example name works too."""
    file = Path(path).expanduser()
    if not file.is_file() and (EXAMPLES / f"{path}.toml").is_file():
        file = EXAMPLES / f"{path}.toml"
    if not file.is_file():
        raise WorkflowError(f"workflow file {str(path)!r} does not exist (examples: {', '.join(examples())})")
    try:
        data = tomllib.loads(file.read_text()) if file.suffix == ".toml" else yaml.safe_load(file.read_text())
        return WorkflowSpec.model_validate(data)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise WorkflowError(f"{file} is not valid {file.suffix[1:].upper()}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise WorkflowError(f"{file}: {problems}") from None


def examples() -> list[str]:
    return sorted(p.stem for p in EXAMPLES.glob("*.toml"))


async def run(sys: Sys, spec: WorkflowSpec, text: str) -> dict[str, Any]:
    """Run a checked workflow on `text`; returns the pattern's result ({"output": ..., ...})."""
    topic, tokens = spec.topic or f"workflow:{spec.name}", spec.max_tokens
    if spec.pattern == "pipeline":
        return await pipeline(sys, spec.steps, text, topic, tokens, spec.durable)
    if spec.pattern == "supervisor":
        tasks = spec.tasks or [line.strip() for line in text.splitlines() if line.strip()]
        return await supervisor(sys, [s.model_dump() for s in spec.specialists], tasks,
                                spec.router.model_dump() if spec.router else None, spec.handoffs, topic, tokens,
                                spec.durable)
    if spec.pattern == "debate":
        return await debate(sys, spec.writer.model_dump(), spec.critic.model_dump(), text, spec.rounds, topic, tokens)
    parts = spec.parts or [p.strip() for p in text.split("\n\n") if p.strip()]
    return await mapreduce(sys, spec.map.model_dump(), spec.reduce.model_dump(), parts, topic, tokens)


async def main(sys: Sys, file: str, input: str | None = None, max_tokens: int | None = None) -> dict[str, Any]:  # noqa: A002
    """`llmos run workflow FILE [INPUT] [--max-tokens N]`."""
    spec = load(file)
    if max_tokens is not None:
        spec = spec.model_copy(update={"max_tokens": int(max_tokens)})
    text = input if input is not None else spec.input
    if text is None and not (spec.tasks or spec.parts):
        raise WorkflowError(f"workflow {spec.name!r} has no input: give one after the file name")
    if spec.durable and not await is_durable(sys):
        return await run_durably(sys, file, input, max_tokens, spec.name)
    return await run(sys, spec, text or "")


async def is_durable(sys: Sys) -> bool:
    # getpid, not sys.pid: replayed, both calls answer from the record, with the same pids
    pid = await sys.getpid()
    me = [info for info in await sys.ps() if info.pid == pid]
    return bool(me) and me[0].durable_id is not None


async def run_durably(sys: Sys, file: str, input: str | None, max_tokens: int | None,  # noqa: A002
                      name: str) -> dict[str, Any]:
    """A durable workflow started as an ordinary process: it runs itself again as a durable
    process (the file by its absolute path, so a later boot finds it) and waits for it."""
    path = Path(file).expanduser()
    where = str(path.resolve()) if path.is_file() else file
    info = await sys.spawn("llmos.apps.workflows.spec:main", where, input, max_tokens, name=name, durable=True)
    assert info.durable_id is not None
    await sys.write(f"[durable workflow {info.durable_id}]\n")
    status = await sys.durable.wait(info.durable_id)
    if not status.ok:
        raise WorkflowError(f"durable workflow {info.durable_id} {status.state.name}: {status.reason}")
    return status.result
