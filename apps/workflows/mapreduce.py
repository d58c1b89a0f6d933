"""mapreduce: N worker agents on the parts of a task at once; one reducer combines them.

The workers send their results to the reducer by message (not through wait), so the
reducer can start as soon as the last one arrives, in whatever order they finish.
"""

from __future__ import annotations

from typing import Any

from llmos.apps.workflows.agent import AGENT_TOKENS, TOPIC, Agent, WorkflowError, agent, collect
from llmos.syscalls import Sys, Timeout

WORKER_TIMEOUT_S = 600.0  # how long the reducer waits for the next worker's result


async def worker(sys: Sys, spec: dict[str, Any], part: str, index: int, reducer: int, topic: str,
                 max_tokens: int) -> None:
    output = await agent(sys, spec, part, topic, max_tokens)
    await sys.send(reducer, {"index": index, "output": output})


async def reducer(sys: Sys, spec: dict[str, Any], parts: int, topic: str, max_tokens: int) -> dict[str, Any]:
    """Receive `parts` results, then combine them (in part order) with one agent turn."""
    results: dict[int, str] = {}
    while len(results) < parts:
        try:
            message = await sys.recv(timeout=WORKER_TIMEOUT_S)
        except Timeout:
            raise WorkflowError(f"the reducer got {len(results)} of {parts} results") from None
        results[message.payload["index"]] = message.payload["output"]
    mapped = [results[i] for i in range(parts)]
    combined = "\n".join(f"{i + 1}. {text}" for i, text in enumerate(mapped))
    return {"output": await agent(sys, spec, combined, topic, max_tokens), "mapped": mapped}


async def mapreduce(sys: Sys, map_spec: dict[str, Any], reduce_spec: dict[str, Any], parts: list[str],
                    topic: str = TOPIC, max_tokens: int = AGENT_TOKENS) -> dict[str, Any]:
    """Fan `parts` out to one worker each; returns {"output": reduced, "mapped": [...]}."""
    if not parts:
        raise WorkflowError("mapreduce needs at least one part")
    mapper, combiner = Agent.model_validate(map_spec), Agent.model_validate(reduce_spec)
    red = await sys.spawn(reducer, combiner.model_dump(), len(parts), topic, max_tokens, name=combiner.name,
                          caps=combiner.caps)
    workers = [await sys.spawn(worker, mapper.model_dump(), part, i, red.pid, topic, max_tokens,
                               name=f"{mapper.name}-{i + 1}", caps=mapper.caps) for i, part in enumerate(parts)]
    try:
        for w in workers:
            await collect(sys, w.pid)
    except WorkflowError:
        await sys.kill(red.pid, "a worker failed")
        raise
    result = await collect(sys, red.pid)
    await sys.write(f"[{combiner.name}] {result['output']}\n")
    return result
