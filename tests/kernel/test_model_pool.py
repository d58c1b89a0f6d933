"""Several base models in one kernel (kernel/model_pool.py): a process moves to a model of
another base, which loads beside the kernel's own with a loop of its own; generations go to
the model of their process; idle models unload after their keep-alive, or to make room (the
least recently used first, never a busy one); kill, suspend and nice reach every model.

The kernel loads models through its ModelLoader port; here one over FakeDrivers, named as
the library would name them (llmos.testing.FakeLoader) ("base" and "other", and "other-terse", a derived model of
"other"). The real loader (llmos.booting.HomeModelLoader) over real models is in
tests/e2e/test_models_side_by_side.py."""

from __future__ import annotations

import io

import anyio
import pytest
from rich.console import Console

import llmos
from llmos.apps.shell import views
from llmos.booting import KEEP_ALIVE_ENV, MAX_LOADED_ENV, MODEL_MEMORY_ENV
from llmos.kernel.errors import ConfigError, ModelNotServed
from llmos.kernel.model_pool import Resident
from llmos.syscalls import Sys
from llmos.testing import FakeDriver, FakeLoader, result, spawn_and_wait, until


async def idle(sys: Sys) -> None:
    await anyio.sleep_forever()


async def reply_with(sys: Sys, model: str | None) -> tuple[str, str]:
    if model is not None:
        await sys.set_model(model)
    reply = await sys.chat("hello", max_tokens=8)
    return reply.text, reply.model


@pytest.fixture
async def kernel():
    async with llmos.boot(FakeDriver(name="base"), memory=None, mcp_servers=None, embedder=None,
                          durable=None) as kernel:
        kernel.models.loader = FakeLoader()
        yield kernel


async def test_processes_on_two_bases_each_get_their_models_reply(kernel):
    procs = [await kernel.spawn(reply_with, model) for model in (None, "other", "other-terse", None)]
    replies = [result(await kernel.wait(p.pid, timeout=5)) for p in procs]
    assert replies[0] == ("echo: hello", "base") and replies[3] == ("echo: hello", "base")
    assert replies[1] == ("other says hi", "other") and replies[2] == ("other says hi", "other")
    assert kernel.models.loader.loaded == ["other"]  # loaded once, for both
    assert sorted(kernel.loaded_models()) == ["base", "other", "other-terse"]


async def test_a_process_on_another_base_shows_it_and_its_children_inherit_it(kernel):
    async def parent(sys: Sys) -> tuple[str | None, tuple[str, str]]:
        await sys.set_model("other")
        child = await sys.spawn(reply_with, None)
        mine = [p for p in await sys.ps() if p.pid == await sys.getpid()][0]
        return mine.model, (await sys.wait(child.pid)).result

    model, child_reply = result(await spawn_and_wait(kernel, parent, caps={"model.generate", "proc.spawn"}))
    assert model == "other" and child_reply == ("other says hi", "other")


async def test_spawn_with_a_model_runs_the_child_there_from_its_first_call(kernel):
    async def parent(sys: Sys) -> tuple[str, str]:
        child = await sys.spawn(reply_with, None, model="other")
        return (await sys.wait(child.pid)).result

    assert result(await spawn_and_wait(kernel, parent, caps={"model.generate", "proc.spawn"})) == \
        ("other says hi", "other")


async def test_unknown_models_are_refused(kernel):
    proc = await kernel.spawn(idle)
    with pytest.raises(ModelNotServed, match="no-such"):
        await kernel.set_model(proc.pid, "no-such")
    with pytest.raises(ModelNotServed, match="no-such"):
        await kernel.spawn(reply_with, None, model="no-such")
    assert kernel.models.residents == {}
    kernel.kill(proc.pid)


async def test_an_idle_model_unloads_after_its_keep_alive_and_loads_again_when_asked(kernel, monkeypatch):
    kernel.models.keep_alive_s = 0.2
    assert result(await spawn_and_wait(kernel, reply_with, "other"))[1] == "other"
    await until(lambda: not kernel.models.residents, timeout=3)

    async def twice(sys: Sys) -> list[str]:
        await sys.set_model("other")
        first = (await sys.chat("one", max_tokens=4)).model
        await until(lambda: not kernel.models.residents, timeout=3)  # unloaded under this idle process
        return [first, (await sys.chat("two", max_tokens=4)).model]

    assert result(await spawn_and_wait(kernel, twice, timeout=10)) == ["other", "other"]
    assert kernel.models.loader.loaded == ["other", "other", "other"]


async def test_loading_past_max_loaded_unloads_the_least_recently_used_idle_model(kernel):
    kernel.models.max_loaded = 3  # the kernel's own and two more
    for name in ("other", "third"):
        assert result(await spawn_and_wait(kernel, reply_with, name))[1] == name
    assert result(await spawn_and_wait(kernel, reply_with, "other"))[1] == "other"  # "third" is older now
    assert result(await spawn_and_wait(kernel, reply_with, "fourth"))[1] == "fourth"
    assert sorted(kernel.models.residents) == ["fourth", "other"]


async def test_a_busy_model_is_never_unloaded_to_make_room(kernel):
    kernel.models.max_loaded = 2
    kernel.models.loader.step_delay_s = 0.05
    busy = await kernel.spawn(reply_with, "other")
    await until(lambda: "other" in kernel.models.residents and kernel.models.residents["other"].busy(), timeout=3)
    refused = await kernel.wait((await kernel.spawn(reply_with, "third")).pid, timeout=5)
    assert "no room for another model" in (refused.reason or "") and "busy" in (refused.reason or "")
    assert result(await kernel.wait(busy.pid, timeout=10))[1] == "other"


async def test_a_memory_budget_counts_the_weights_of_every_loaded_model(kernel):
    kernel.models.loader.memory_bytes = 600
    kernel.models.budget_bytes = 1000  # room for one 600-byte model beside the kernel's (0 bytes here)
    assert result(await spawn_and_wait(kernel, reply_with, "other"))[1] == "other"
    assert result(await spawn_and_wait(kernel, reply_with, "third"))[1] == "third"
    assert list(kernel.models.residents) == ["third"]


async def test_kill_suspend_and_nice_reach_a_process_on_another_base(kernel):
    kernel.models.loader.step_delay_s = 0.02

    async def long_reply(sys: Sys) -> str:
        await sys.set_model("other")
        return (await sys.chat("hi", max_tokens=200)).text

    proc = await kernel.spawn(long_reply)
    await until(lambda: "other" in kernel.models.residents and kernel.models.residents["other"].busy(), timeout=3)
    resident: Resident = kernel.models.residents["other"]
    kernel.suspend(proc.pid)
    assert proc.pid in resident.service.scheduler.suspended
    kernel.resume(proc.pid)
    kernel.nice(proc.pid, 5)
    assert all(job.priority == 5 for job in resident.service.jobs.values())
    kernel.kill(proc.pid)
    await until(lambda: not resident.busy(), timeout=3)  # its generation was cancelled there


async def test_the_kernels_own_model_never_unloads(kernel):
    kernel.models.keep_alive_s = 0.05
    await anyio.sleep(0.3)
    assert result(await spawn_and_wait(kernel, reply_with, None)) == ("echo: hello", "base")


async def test_a_context_window_counts_in_the_tokens_of_the_model_it_moved_to(kernel):
    """Three turns on the kernel's model (a token a character), then one on "third" (two a
    character, a context of 1000): the window is sized and counted for "third", and the
    prompt "third" gets holds its own token ids, history included."""
    async def moves(sys: Sys) -> tuple[int, int, int, int]:
        for i in range(3):
            await sys.chat(f"turn {i} " + "words " * 5, max_tokens=4)
        before = (await sys.context.stats()).used
        await sys.set_model("third")
        await sys.chat("and now?", max_tokens=4)
        after = await sys.context.stats()
        return before, after.used, after.context_length, after.evicted

    before, after, context_length, evicted = result(await spawn_and_wait(kernel, moves))
    third = kernel.models.residents["third"].driver
    prompt = third.jobs[-1]
    assert context_length == 1000 and evicted == 0 and after > 1.8 * before  # counted again, in "third"'s tokens
    assert len(prompt.prompt_ids) == 2 * len(third.render(prompt)) and "turn 2" in third.render(prompt)


# -- settings from the environment (Ollama's OLLAMA_KEEP_ALIVE, OLLAMA_MAX_LOADED_MODELS) -------------
def boot_fake(**options):  # noqa: ANN003, ANN201
    return llmos.boot(FakeDriver(name="base"), memory=None, mcp_servers=None, embedder=None, durable=None, **options)


async def test_the_pool_s_limits_come_from_the_environment_at_boot(monkeypatch):
    for name in (KEEP_ALIVE_ENV, MAX_LOADED_ENV, MODEL_MEMORY_ENV):
        monkeypatch.delenv(name, raising=False)
    async with boot_fake() as kernel:
        assert (kernel.models.keep_alive_s, kernel.models.max_loaded) == (300, 3)  # Ollama's 5 minutes and 3 models
        assert kernel.models.budget_bytes is None
    monkeypatch.setenv(KEEP_ALIVE_ENV, "0")  # unload as soon as idle
    monkeypatch.setenv(MAX_LOADED_ENV, " 1 ")
    monkeypatch.setenv(MODEL_MEMORY_ENV, "1.5")
    async with boot_fake() as kernel:
        assert (kernel.models.keep_alive_s, kernel.models.max_loaded) == (0.0, 1)
        assert kernel.models.budget_bytes == 3 * 2**29


@pytest.mark.parametrize(("name", "raw", "says"), [
    (KEEP_ALIVE_ENV, "5m", "expected a number of seconds"), (KEEP_ALIVE_ENV, "-1", "at least 0 seconds"),
    (MAX_LOADED_ENV, "2.5", "a whole number"), (MAX_LOADED_ENV, "0", "at least 1"),
    (MODEL_MEMORY_ENV, "lots", "a number of GiB"), (MODEL_MEMORY_ENV, "-0.5", "at least 0 GiB"),
])
async def test_a_bad_pool_setting_stops_the_boot_naming_the_variable(monkeypatch, name, raw, says):
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigError, match=f"{name}=.*{says}"):
        async with boot_fake():
            pass


async def test_statistics_and_top_show_the_other_loaded_models(kernel):
    assert kernel.statistics().models == ()
    assert result(await spawn_and_wait(kernel, reply_with, "other"))[1] == "other"
    [other] = kernel.statistics().models
    assert other.model == "other" and other.tokens > 0 and other.steps > 0
    out = Console(file=io.StringIO(), width=160)
    out.print(views.top_view(kernel.ps(include_ended=True), kernel.statistics(), 0.0, "base"))
    assert "also loaded: other  batch 0  queue 0" in out.file.getvalue()
