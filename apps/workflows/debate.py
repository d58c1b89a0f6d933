"""debate: a writer and a critic, two long-lived processes, trade drafts and critiques by
message for some rounds; the moderator (the calling process) relays and keeps the record."""

from __future__ import annotations

from typing import Any

from llmos.apps.workflows.agent import AGENT_TOKENS, TOPIC, Agent, WorkflowError, agent, collect
from llmos.syscalls import Sys, Timeout

REVISE = ("Improve the draft using the critique. Reply with the new draft only.\n\n"
          "Draft:\n{draft}\n\nCritique:\n{critique}")
TURN_TIMEOUT_S = 600.0  # how long the moderator waits for one turn


async def role(sys: Sys, spec: dict[str, Any], topic: str, max_tokens: int) -> int:
    """Answer each message until told to stop: a task or a draft is worked on with this
    role's prompt, a draft with its critique is revised. Returns the number of turns."""
    turns = 0
    while not (message := await sys.recv()).payload.get("stop"):
        work = message.payload
        if "critique" in work:
            text = REVISE.format(draft=work["draft"], critique=work["critique"])
            spec = {**spec, "prompt": "{input}"}
        else:
            text = work["text"]
        output = await agent(sys, spec, text, topic, max_tokens)
        await sys.send(message.sender, {"output": output})
        turns += 1
    return turns


async def debate(sys: Sys, writer: dict[str, Any], critic: dict[str, Any], text: str, rounds: int = 1,
                 topic: str = TOPIC, max_tokens: int = AGENT_TOKENS) -> dict[str, Any]:
    """Draft, then `rounds` times critique and revise; returns {"output", "rounds": [...]}."""
    w, c = Agent.model_validate(writer), Agent.model_validate(critic)
    wpid = (await sys.spawn(role, w.model_dump(), topic, max_tokens, name=w.name, caps=w.caps)).pid
    cpid = (await sys.spawn(role, c.model_dump(), topic, max_tokens, name=c.name, caps=c.caps)).pid
    try:
        draft = await turn(sys, wpid, {"text": text})
        await sys.write(f"[{w.name}] {draft}\n")
        record = []
        for _ in range(rounds):
            critique = await turn(sys, cpid, {"text": draft})
            await sys.write(f"[{c.name}] {critique}\n")
            draft = await turn(sys, wpid, {"draft": draft, "critique": critique})
            await sys.write(f"[{w.name}] {draft}\n")
            record.append({"critique": critique, "draft": draft})
    finally:
        for pid in (wpid, cpid):
            await sys.send(pid, {"stop": True})
    for pid in (wpid, cpid):
        await collect(sys, pid)
    return {"output": draft, "rounds": record}


async def turn(sys: Sys, pid: int, work: dict[str, Any]) -> str:
    await sys.send(pid, work)
    try:
        message = await sys.recv(timeout=TURN_TIMEOUT_S)
    except Timeout:
        raise WorkflowError(f"process {pid} gave no answer within {TURN_TIMEOUT_S} s") from None
    return message.payload["output"]
