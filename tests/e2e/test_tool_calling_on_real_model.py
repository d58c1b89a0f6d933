"""Model-driven tool calling on the real SmolLM2 model: 50 prompts across 3 tools, chosen by
`choose` (likelihood and meaning), arguments in a constrained turn."""

from __future__ import annotations

import pytest

import llmos
from llmos.syscalls import InvalidRequest, Sys, ToolCall

pytestmark = pytest.mark.model

TOOLS = ("calculator", "current_time", "list_files")
PROMPTS = {
    "calculator": [f"What is {a} times {b}?" for a, b in zip(range(12, 29), range(7, 24))],
    "current_time": ["What time is it now?", "Tell me the current time.", "What is today's date?",
                     "Which day of the week is it today?", "What is the time right now in UTC?",
                     "Can you check the clock for me?", "What's the date and time?", "Is it morning or evening now?",
                     "What year is it?", "How late is it?", "Give me the current timestamp.",
                     "What hour is it?", "Check the current time please.", "What is the date today?",
                     "Tell me today's date.", "What time does the clock show?"],
    "list_files": ["Which files are in my workspace?", "List my files.", "Show me the files in the folder.",
                   "What files do I have?", "List the contents of my workspace.", "Are there any files here?",
                   "Show the directory listing.", "What is in my folder?", "List all files in the workspace.",
                   "Which documents are saved in my workspace?", "Show my saved files.",
                   "What files exist in the current folder?", "Can you list the files?", "Show files please.",
                   "List everything in my workspace folder.", "What files can you see?", "Enumerate my files."],
}


async def choose(sys: Sys, prompt: str) -> tuple[str, tuple[ToolCall, ...]]:
    try:
        reply = await sys.chat(prompt, tools=list(TOOLS), max_tokens=64)
    except InvalidRequest as err:  # the arguments' JSON did not finish within max_tokens
        return f"cut short: {err.message}", ()
    return reply.text, reply.tool_calls


async def test_fifty_prompts_always_parse_and_mostly_pick_the_right_tool(smollm2, capsys):
    cases = [(tool, prompt) for tool, prompts in PROMPTS.items() for prompt in prompts]
    assert len(cases) == 50
    async with llmos.boot(smollm2) as kernel:
        pids = [(await kernel.spawn(choose, prompt, caps={"model.generate", "tool.*"})).pid for _, prompt in cases]
        statuses = [await kernel.wait(pid) for pid in pids]
    failed = [s.reason for s in statuses if not s.ok]
    assert not failed, failed  # every call ended in a tool call, an answer, or a typed cut-short error
    right = sum(1 for (tool, _), s in zip(cases, statuses, strict=True)
                if s.result[1] and s.result[1][0].name == tool)
    cut = sum(1 for s in statuses if s.result[0].startswith("cut short"))
    calls = [c for s in statuses for c in s.result[1]]
    assert all(c.name in TOOLS for c in calls)
    with capsys.disabled():
        print(f"\ntool calling on SmolLM2: {len(calls)} tool calls, right tool {right}/50, "
              f"{cut} arguments cut short by max_tokens")
    assert right >= 35 and cut <= 5  # 24/50 when the choice was generated; the figure goes in the note


async def test_the_react_app_answers_through_the_calculator(smollm2):
    from llmos.apps.react import main as react

    async with llmos.boot(smollm2) as kernel:
        proc = await kernel.spawn(react, "What is 37 times 21?", "calculator",
                                  caps={"model.generate", "tool.calculator"})
        status = await kernel.wait(proc.pid)
        calls = [e for e in kernel.trace if e.pid == proc.pid and e.call == "call_tool"]
    assert status.ok, status.reason
    assert calls and calls[0].outcome == "ok"  # it used the calculator
    assert "777" in status.result


async def test_offering_a_tool_the_process_may_not_call_is_refused(smollm2):
    from llmos.syscalls import PermissionDenied

    async def sneaky(sys: Sys) -> str:
        try:
            await sys.chat("hi", tools=["calculator"])
        except PermissionDenied as err:
            return err.code.name
        return "allowed"

    async with llmos.boot(smollm2) as kernel:
        status = await kernel.wait((await kernel.spawn(sneaky, caps={"model.generate"})).pid)
    assert status.result == "EPERM"
