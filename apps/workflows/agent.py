"""The agent every pattern is made of: a process that answers one task with the model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmos.syscalls import Sys

TOPIC = "workflow"  # where agents publish their turns unless a workflow names another
AGENT_TOKENS = 128  # an agent's reply budget unless its spec says otherwise


class Agent(BaseModel):
    """An agent's description: its name, its system prompt, and how to phrase its task.

    `prompt` is a template: "{input}" is replaced by the text the agent works on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    system: str | None = None
    prompt: str = "{input}"
    description: str = ""  # what a supervisor reads when it routes tasks
    max_tokens: int | None = Field(default=None, ge=1)
    # What this agent may do (tool.run_python, net, ...): never more than the workflow holds,
    # which is what `llmos run` granted it (`--allow`). None: the same as the workflow.
    caps: list[str] | None = None

    def task(self, text: str) -> str:
        return self.prompt.replace("{input}", text)


async def agent(sys: Sys, spec: dict[str, Any], text: str, topic: str = TOPIC, max_tokens: int = AGENT_TOKENS) -> str:
    """Do the task `spec` describes on `text`; publish the result on `topic` and return it."""
    me = Agent.model_validate(spec)
    reply = await sys.chat(messages=[{"role": "user", "content": me.task(text)}], system=me.system,
                           max_tokens=me.max_tokens or max_tokens)
    output = reply.text.strip()
    # getpid rather than sys.pid: a durable agent's replay must ask the same publish
    await sys.publish(topic, {"agent": me.name, "pid": await sys.getpid(), "output": output})
    return output


async def run_agent(sys: Sys, spec: Agent, text: str, topic: str = TOPIC, max_tokens: int = AGENT_TOKENS,
                    durable: bool = False) -> str:
    """Spawn an agent process for one task and wait for its output."""
    return await collect(sys, await start_agent(sys, spec, text, topic, max_tokens, durable))


AgentRun = int | str  # an agent process's pid, or its durable id if it is durable


async def start_agent(sys: Sys, spec: Agent, text: str, topic: str = TOPIC, max_tokens: int = AGENT_TOKENS,
                      durable: bool = False) -> AgentRun:
    """Start an agent; a durable one (in a durable workflow) survives the kernel with its work."""
    info = await sys.spawn(agent, spec.model_dump(), text, topic, max_tokens, name=spec.name, durable=durable,
                           caps=spec.caps)
    return info.durable_id if durable and info.durable_id is not None else info.pid


async def collect(sys: Sys, run: AgentRun) -> str:
    """The output of an agent, once it ends; an agent that did not finish fails the workflow."""
    status = await (sys.durable.wait(run) if isinstance(run, str) else sys.wait(run))
    if not status.ok:
        raise WorkflowError(f"agent {status.name} ({run}) {status.state.name}: {status.reason}")
    return status.result


class WorkflowError(RuntimeError):
    """A workflow could not finish: an agent failed, or its description is wrong."""
