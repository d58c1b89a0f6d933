"""Two base models in one kernel, on the real model: the suite's SmolLM2 folder imported a
second time under another name is a second base (its own weights, engine and loop). A
process moves to it, or a request of the daemon's OpenAI API names it; it loads beside the
kernel's own model, answers, shows in `ps` (and /v1/models once loaded), and unloads once
idle past its keep-alive."""

from __future__ import annotations

import openai
import pytest

import llmos
from llmos import library
from llmos.kernel.model_pool import weight_bytes
from llmos.syscalls import Sys
from llmos.testing import result, spawn_and_wait, until

pytestmark = pytest.mark.model

QUESTION = "What is the capital of France?"


async def ask(sys: Sys, model: str | None) -> tuple[str, str, str | None]:
    if model is not None:
        await sys.set_model(model)
    reply = await sys.chat(QUESTION, max_tokens=12, temperature=0)
    mine = [p for p in await sys.ps() if p.pid == await sys.getpid()][0]
    return reply.text, reply.model, mine.model


async def test_a_process_moves_to_a_second_base_model_which_unloads_when_idle(smollm2, session_llmos_home):
    library.import_path(session_llmos_home / "models" / "smollm2", "smol-twin")  # the test's own library
    async with llmos.boot(smollm2, memory=None) as kernel:
        kernel.models.keep_alive_s = 1.0
        procs = [await kernel.spawn(ask, model) for model in (None, "smol-twin")]
        (own, own_model, _), (twin, twin_model, shown) = [result(await kernel.wait(p.pid, timeout=120)) for p in procs]
        assert own_model == "smollm2" and twin_model == "smol-twin" and shown == "smol-twin"
        assert "Paris" in own and "Paris" in twin
        twin_driver = kernel.models.residents["smol-twin"].driver
        assert twin_driver is not kernel.driver and weight_bytes(twin_driver) > 100 * 2**20  # weights of its own
        await until(lambda: not kernel.models.residents, timeout=10)
        again = result(await spawn_and_wait(kernel, ask, "smol-twin", timeout=120))  # loads again
        assert "Paris" in again[0]


async def test_the_daemons_openai_api_serves_a_second_base_model_by_name(smollm2_server, session_llmos_home):
    daemons_home = session_llmos_home  # the session daemon's LLMOS_HOME
    library.import_path(daemons_home / "models" / "smollm2", "smol-served-twin", home=daemons_home)
    try:
        async with openai.AsyncOpenAI(base_url=smollm2_server + "/v1", api_key="none", max_retries=0) as ai:
            before = [model.id async for model in ai.models.list()]
            reply = await ai.chat.completions.create(model="smol-served-twin", temperature=0, max_tokens=12,
                                                     messages=[{"role": "user", "content": QUESTION}])
            after = [model.id async for model in ai.models.list()]
    finally:
        library.remove("smol-served-twin", home=daemons_home)
    assert "smol-served-twin" not in before and "smol-served-twin" in after  # /v1/models: what is loaded
    assert "Paris" in reply.choices[0].message.content
