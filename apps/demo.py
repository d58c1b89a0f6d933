"""The demo `make demo` runs: several agent processes share one real model through the kernel.

A coordinator process spawns one agent per question; each agent chats with the model and
sends its answer back by message. The kernel batches their generation requests together.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

import llmos
from llmos.syscalls import Sys

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 plus 30?",
    "Write one sentence about the ocean.",
)


async def agent(sys: Sys, question: str) -> str:
    reply = await sys.chat(question, max_tokens=48)
    await sys.send("coordinator", {"pid": sys.pid, "question": question, "answer": reply.text.strip(),
                                   "tokens": reply.completion_tokens, "seconds": round(reply.elapsed_s, 2)})
    return reply.text


async def coordinator(sys: Sys, questions: list[str]) -> list[dict]:
    for i, question in enumerate(questions):
        await sys.spawn(agent, question, name=f"agent-{i + 1}")
    answers = [(await sys.recv(timeout=300)).payload for _ in questions]
    return sorted(answers, key=lambda a: a["pid"])


async def run_demo(console: Console, model: str = "smollm2", questions: tuple[str, ...] = QUESTIONS) -> int:
    console.print(f"[bold]llmos demo[/]: {len(questions)} agent processes share one {model} model")
    started = time.perf_counter()
    async with llmos.boot(model) as kernel:
        boot_s = time.perf_counter() - started
        proc = await kernel.spawn(coordinator, list(questions), name="coordinator")
        status = await kernel.wait(proc.pid)
    if not status.ok:
        console.print(f"[red]coordinator {status.state.name}: {status.reason}")
        return 1
    table = Table("pid", "question", "answer", "tokens", "s", title="answers")
    for a in status.result:
        table.add_row(str(a["pid"]), a["question"], a["answer"], str(a["tokens"]), str(a["seconds"]))
    console.print(table)
    total = sum(a["tokens"] for a in status.result)
    elapsed = time.perf_counter() - started - boot_s
    console.print(f"model ready in {boot_s:.1f} s; {total} tokens in {elapsed:.1f} s "
                  f"({total / elapsed:.1f} tokens/s across agents)")
    return 0
