"""`llmos run react "question"`: a ReAct-style agent. The model calls tools until it can
answer: model -> tool call -> result -> model, within a step limit. Each step shows the
model the question and what the tools said so far (a scratchpad), statelessly, so it
never mistakes its own earlier calls for an answer to copy."""

from __future__ import annotations

import json

from llmos.syscalls import SyscallError, Sys

DEFAULT_TOOLS = "calculator,current_time"


async def main(sys: Sys, question: str, tools: str = DEFAULT_TOOLS, steps: int = 5, max_tokens: int = 64) -> str:
    names = [name.strip() for name in tools.split(",") if name.strip()]
    observations: list[str] = []
    asked: set[str] = set()
    for _ in range(int(steps)):
        reply = await sys.chat(messages=[_turn(question, observations)], tools=names, max_tokens=int(max_tokens))
        if not reply.tool_calls:
            return reply.text
        call = reply.tool_calls[0]
        key = f"{call.name}({json.dumps(call.arguments, sort_keys=True)})"
        if key in asked:  # it asks again for what it already has: time to answer
            break
        asked.add(key)
        observations.append(f"{key} returned {await _run(sys, call.name, call.arguments)}")
    final = await sys.chat(messages=[_turn(question, observations, "Answer the question in one sentence.")],
                           max_tokens=int(max_tokens))
    return final.text


def _turn(question: str, observations: list[str], ask: str = "") -> dict[str, str]:
    lines = [f"Question: {question}"]
    if observations:
        lines += ["What the tools said:", *(f"- {o}" for o in observations)]
    return {"role": "user", "content": "\n".join([*lines, ask] if ask else lines)}


async def _run(sys: Sys, name: str, arguments: dict) -> str:
    try:
        return json.dumps(await sys.call_tool(name, **arguments))
    except SyscallError as err:  # the model learns the tool failed and can try otherwise
        return f"an error: {err.message}"
