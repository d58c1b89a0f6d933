"""supervisor: a router agent hands each task to the specialist it names; the specialists
work at once, and one may hand its task off to another ("HANDOFF: name")."""

from __future__ import annotations

import re
from typing import Any

from llmos.apps.workflows.agent import AGENT_TOKENS, TOPIC, Agent, WorkflowError, collect, start_agent
from llmos.syscalls import Sys

ROUTER = Agent(name="router", system="You route tasks to the right specialist.",
               prompt="Specialists:\n{specialists}\n\nTask: {input}\n\nWhich specialist should do this task? "
                      "Answer with the specialist's name only.")
HANDOFF_NOTE = ("If another specialist ({others}) should do this task instead, reply only "
                "'HANDOFF: <name>'.")
MAX_HANDOFFS = 2  # hops per task, so two specialists cannot pass a task back and forth forever
ROUTE_TOKENS = 12
_HANDOFF = re.compile(r"^\s*HANDOFF:\s*([\w-]+)", re.IGNORECASE)


def choose(reply: str, specialists: list[Agent], task: str) -> Agent:
    """The specialist the router's reply names first; failing that, the one whose
    description shares most words with the task; failing that, the first."""
    named = [(reply.lower().find(s.name.lower()), i) for i, s in enumerate(specialists)]
    found = sorted((at, i) for at, i in named if at >= 0)
    if found:
        return specialists[found[0][1]]
    words = set(re.findall(r"\w+", task.lower()))
    overlap = [len(words & set(re.findall(r"\w+", f"{s.name} {s.description}".lower()))) for s in specialists]
    return specialists[overlap.index(max(overlap))]


def handoff(output: str, specialists: list[Agent]) -> Agent | None:
    match = _HANDOFF.match(output)
    if match is None:
        return None
    return next((s for s in specialists if s.name.lower() == match.group(1).lower()), None)


async def supervisor(sys: Sys, specialists: list[dict[str, Any]], tasks: list[str],
                     router: dict[str, Any] | None = None, handoffs: bool = False, topic: str = TOPIC,
                     max_tokens: int = AGENT_TOKENS) -> dict[str, Any]:
    """Route every task, run the chosen specialists at once, follow hand-offs; returns
    {"output": a report, "results": [{"task", "route", "output"}...]}."""
    team = [Agent.model_validate(s) for s in specialists]
    if not team:
        raise WorkflowError("a supervisor needs at least one specialist")
    if handoffs:
        team = [_with_handoff_note(s, team) for s in team]
    picks = await route(sys, Agent.model_validate(router) if router else ROUTER, team, tasks, topic)
    routes = [[pick] for pick in picks]
    pending = {await start_agent(sys, pick, task, topic, max_tokens): i
               for i, (pick, task) in enumerate(zip(picks, tasks))}
    outputs: dict[int, str] = {}
    while pending:
        pid, i = next(iter(pending.items()))
        del pending[pid]
        output = await collect(sys, pid)
        target = handoff(output, team) if handoffs and len(routes[i]) <= MAX_HANDOFFS else None
        if target is not None:
            routes[i].append(target)
            pending[await start_agent(sys, target, tasks[i], topic, max_tokens)] = i
        else:
            outputs[i] = output
    results = [{"task": t, "route": [a.name for a in routes[i]], "output": outputs[i]} for i, t in enumerate(tasks)]
    for r in results:
        await sys.write(f"[{' -> '.join(r['route'])}] {r['output']}\n")
    report = "\n\n".join(f"{r['task']}\n[{r['route'][-1]}] {r['output']}" for r in results)
    return {"output": report, "results": results}


async def route(sys: Sys, router: Agent, team: list[Agent], tasks: list[str], topic: str) -> list[Agent]:
    """One router agent per task, all at once; each reply names a specialist."""
    listing = "\n".join(f"- {s.name}: {s.description}" for s in team)
    spec = router.model_copy(update={"prompt": router.prompt.replace("{specialists}", listing)})
    pids = [await start_agent(sys, spec, task, topic, ROUTE_TOKENS) for task in tasks]
    return [choose(await collect(sys, pid), team, task) for pid, task in zip(pids, tasks)]


def _with_handoff_note(spec: Agent, team: list[Agent]) -> Agent:
    others = ", ".join(s.name for s in team if s is not spec)
    system = "\n".join(filter(None, [spec.system, HANDOFF_NOTE.format(others=others)]))
    return spec.model_copy(update={"system": system})
