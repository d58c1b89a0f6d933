"""A durable conversation on the real SmolLM2 model survives its kernel: the recorded reply
is not generated again, and the next turn is asked in the conversation the record kept."""

from __future__ import annotations

import pytest

import llmos
from llmos.syscalls import DurableState
from llmos.testing import result

pytestmark = pytest.mark.model

CONVERSATION = """
import os

async def main(sys, first_reply_file):
    first = await sys.chat("My name is Ada. Say hello to me.", max_tokens=24, temperature=0)
    with open(first_reply_file, "w") as out:
        out.write(first.text)
    if os.environ.get("LLMOS_TEST_CRASH"):
        os._exit(9)
    second = await sys.chat("What is my name?", max_tokens=16, temperature=0)
    window = await sys.context.snapshot()
    return {"first": first.text, "second": second.text, "second_tokens": second.completion_tokens,
            "window": [[entry.role, entry.content] for entry in window.entries]}
"""


async def test_a_durable_conversation_resumes_without_regenerating_its_recorded_turn(
        smollm2, apps, crashed_kernel, tmp_path) -> None:
    ref = apps.write("conversation", CONVERSATION)
    first_reply_file = tmp_path / "first-reply.txt"
    durable_id = crashed_kernel(ref, str(first_reply_file), model="smollm2", timeout=180)
    first_reply = first_reply_file.read_text()
    assert first_reply.strip()

    async with llmos.boot(smollm2, memory=None, mcp_servers=None, embedder=None) as kernel:
        assert kernel.durability.resumed == [durable_id]
        out = result(await kernel.durability.wait(durable_id, timeout=120))
        generated = kernel.statistics().generation
        described = await kernel.durability.info(durable_id)
    assert out["first"] == first_reply  # from the record...
    assert first_reply_file.read_text() == first_reply
    assert generated is not None
    assert generated.tokens == out["second_tokens"]  # ... for only the second turn was generated here
    assert out["second"].strip()
    assert out["window"] == [["user", "My name is Ada. Say hello to me."], ["assistant", first_reply],
                             ["user", "What is my name?"], ["assistant", out["second"]]]
    assert described.state is DurableState.EXITED
    assert described.steps == 3  # two chats and the snapshot
