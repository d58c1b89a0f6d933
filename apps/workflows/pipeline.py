"""pipeline: each step's output is the next step's input.

A step is an agent, or a human-in-the-loop step that asks the user (through `ask_user`):
`approve` asks whether to go on with the text just shown (yes; no to stop; any other
answer replaces the text), `input` asks for text and passes the answer on.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from llmos.apps.workflows.agent import AGENT_TOKENS, TOPIC, Agent, run_agent
from llmos.syscalls import Sys

YES = {"", "y", "yes", "ok", "approve", "approved"}
NO = {"n", "no", "stop", "reject", "rejected"}


class HumanStep(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ask: str  # the question put to the user
    kind: Literal["approve", "input"] = "approve"


Step = Agent | HumanStep


def step_of(spec: dict[str, Any]) -> Step:
    return HumanStep.model_validate(spec) if "ask" in spec else Agent.model_validate(spec)


async def pipeline(sys: Sys, steps: list[dict[str, Any]], text: str, topic: str = TOPIC,
                   max_tokens: int = AGENT_TOKENS, durable: bool = False) -> dict[str, Any]:
    """Run the steps in order; returns {"output": final text, "steps": [{step, output}...]}
    and, when the user stopped it, "stopped_at"."""
    transcript: list[dict[str, str]] = []
    for number, spec in enumerate(steps, 1):
        step = step_of(spec)
        if isinstance(step, HumanStep):
            answer = await ask(sys, step, text)
            if answer is None:
                return {"output": text, "steps": transcript, "stopped_at": number}
            if answer == text:  # approved as is
                continue
            text, name = answer, "user"
        else:
            text, name = await run_agent(sys, step, text, topic, max_tokens, durable), step.name
        transcript.append({"step": name, "output": text})
        await sys.write(f"[{name}] {text}\n")
    return {"output": text, "steps": transcript}


async def ask(sys: Sys, step: HumanStep, text: str) -> str | None:
    """The text to go on with, or None when the user said no."""
    if step.kind == "input":
        return await sys.ask_user(f"{step.ask} ")
    answer = (await sys.ask_user(f"{step.ask} [yes/no/or type a replacement] ")).strip()
    if answer.lower() in YES:
        return text
    return None if answer.lower() in NO else answer
