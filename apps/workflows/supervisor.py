"""supervisor: each task goes to the specialist the model finds the likeliest fit (the
`choose` syscall, over the specialists' names and descriptions); the specialists work at
once, and one may hand its task off to another ("HANDOFF: name")."""

from __future__ import annotations

import re
from typing import Any

import anyio

from llmos.apps.workflows.agent import AGENT_TOKENS, TOPIC, Agent, WorkflowError, collect, start_agent
from llmos.syscalls import Sys

# The task itself is the question (its meaning is compared with each specialist's); what
# is asked of it goes in the system prompt.
ROUTER = Agent(name="router", system="You route tasks to the right specialist: which one should do this task?",
               prompt="{input}")
HANDOFF_NOTE = ("If another specialist ({others}) should do this task instead, reply only "
                "'HANDOFF: <name>'.")
MAX_HANDOFFS = 2  # hops per task, so two specialists cannot pass a task back and forth forever
_HANDOFF = re.compile(r"^\s*HANDOFF:\s*([\w-]+)", re.IGNORECASE)


def handoff(output: str, specialists: list[Agent]) -> Agent | None:
    match = _HANDOFF.match(output)
    if match is None:
        return None
    return next((s for s in specialists if s.name.lower() == match.group(1).lower()), None)


async def supervisor(sys: Sys, specialists: list[dict[str, Any]], tasks: list[str],
                     router: dict[str, Any] | None = None, handoffs: bool = False, topic: str = TOPIC,
                     max_tokens: int = AGENT_TOKENS, durable: bool = False) -> dict[str, Any]:
    """Route every task, run the chosen specialists at once, follow hand-offs; returns
    {"output": a report, "results": [{"task", "route", "output"}...]}."""
    team = [Agent.model_validate(s) for s in specialists]
    if not team:
        raise WorkflowError("a supervisor needs at least one specialist")
    if handoffs:
        team = [_with_handoff_note(s, team) for s in team]
    picks = await route(sys, Agent.model_validate(router) if router else ROUTER, team, tasks, topic)
    routes = [[pick] for pick in picks]
    pending = {await start_agent(sys, pick, task, topic, max_tokens, durable): i
               for i, (pick, task) in enumerate(zip(picks, tasks))}
    outputs: dict[int, str] = {}
    while pending:
        run, i = next(iter(pending.items()))
        del pending[run]
        output = await collect(sys, run)
        target = handoff(output, team) if handoffs and len(routes[i]) <= MAX_HANDOFFS else None
        if target is not None:
            routes[i].append(target)
            pending[await start_agent(sys, target, tasks[i], topic, max_tokens, durable)] = i
        else:
            outputs[i] = output
    results = [{"task": t, "route": [a.name for a in routes[i]], "output": outputs[i]} for i, t in enumerate(tasks)]
    for r in results:
        await sys.write(f"[{' -> '.join(r['route'])}] {r['output']}\n")
    report = "\n\n".join(f"{r['task']}\n[{r['route'][-1]}] {r['output']}" for r in results)
    return {"output": report, "results": results}


async def route(sys: Sys, router: Agent, team: list[Agent], tasks: list[str], topic: str) -> list[Agent]:
    """The specialist for each task, chosen by likelihood; all tasks at once, so the engine
    scores them together. The router's system prompt and its prompt ("{input}" is the task)
    frame the question; the specialists are the options."""
    if len(team) == 1:
        return [team[0]] * len(tasks)
    listing = "\n".join(f"- {s.name}: {s.description}" for s in team)
    names, descriptions = [s.name for s in team], [s.description or s.name for s in team]
    picks: list[Agent | None] = [None] * len(tasks)

    async def pick(i: int) -> None:
        question = router.task(tasks[i]).replace("{specialists}", listing)
        choice = await sys.choose(question, names, descriptions=descriptions, system=router.system)
        picks[i] = team[choice.index]

    async with anyio.create_task_group() as tg:
        for i in range(len(tasks)):
            tg.start_soon(pick, i)
    return [p for p in picks if p is not None]


def _with_handoff_note(spec: Agent, team: list[Agent]) -> Agent:
    others = ", ".join(s.name for s in team if s is not spec)
    system = "\n".join(filter(None, [spec.system, HANDOFF_NOTE.format(others=others)]))
    return spec.model_copy(update={"system": system})
