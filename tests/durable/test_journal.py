"""A durable process survives its kernel: a kernel dies mid-run (an OS process that ends with
os._exit or SIGKILL), the next boot over the same LLMOS_HOME resumes the process, recorded
syscalls answer from the record and only the rest run live. A replay that asks something
else than the record fails with ReplayDiverged; streamed chats are recorded whole; tools
get an idempotency key that a replay keeps."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest

import llmos
from llmos.syscalls import DurableState, ProcState
from llmos.testing import FakeDriver, result, spawn_and_wait, until

BOOT: dict[str, Any] = {"memory": None, "mcp_servers": None, "embedder": None}


def boot(driver: Any = None, **options: Any) -> AbstractAsyncContextManager[llmos.Kernel]:
    return llmos.boot(driver if driver is not None else FakeDriver(), **{**BOOT, **options})


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# A tool with a side effect (a line appended to a file, with the call's idempotency key), and
# an app that calls it `n` times, sleeping between calls; while LLMOS_TEST_CRASH is set, the
# kernel dies right after call number `crash_after` (0-based) has been recorded.
TOOL_APP = """
import os
import llmos
from llmos.syscalls import ToolContext

@llmos.tool(sends_data=False)  # it writes a local file, and sends nothing out
def append_line(path: str, text: str, ctx: ToolContext) -> str:
    with open(path, "a") as out:
        out.write(f"{ctx.idempotency_key} {text}\\n")
    if os.environ.get("LLMOS_TEST_CRASH") and os.environ.get("LLMOS_TEST_CRASH_IN_TOOL") == text:
        os._exit(9)  # the side effect happened; the kernel dies before the call is recorded
    return text.upper()

async def main(sys, log, n, crash_after=-1, pause=0.0):
    out = []
    for i in range(n):
        out.append(await sys.call_tool("append_line", path=log, text=f"line{i}"))
        await sys.sleep(pause)
        if i == crash_after and os.environ.get("LLMOS_TEST_CRASH"):
            os._exit(9)
    return out
"""


def tools_app(apps: Any, tmp_path: Path) -> tuple[str, str, Path]:
    """TOOL_APP, its tool `append_line` (by reference) and the file the tool appends to."""
    ref = apps.write("tools_app", TOOL_APP)
    return ref, f"{ref.rpartition(':')[0]}:append_line", tmp_path / "side-effects.txt"


# -- crash, resume, and what runs again ------------------------------------------------------------
async def test_a_crashed_kernels_durable_process_resumes_at_boot_without_rerunning_recorded_calls(
        apps, crashed_kernel, tmp_path) -> None:
    ref, tool, log = tools_app(apps, tmp_path)
    durable_id = crashed_kernel(ref, str(log), 6, 2, tools=[tool])
    assert len(lines(log)) == 3  # calls 0, 1 and 2 ran before the crash

    async with boot(tools=[apps.attribute(tool)]) as kernel:
        assert kernel.durability.resumed == [durable_id]
        status = await kernel.durability.wait(durable_id, timeout=20)
        described = await kernel.durability.info(durable_id)
    assert result(status) == [f"LINE{i}" for i in range(6)]
    written = lines(log)
    assert [line.split()[1] for line in written] == [f"line{i}" for i in range(6)]  # none ran twice
    assert len({line.split()[0] for line in written}) == 6  # each call its own idempotency key
    assert described.state is DurableState.EXITED
    assert described.steps == 12  # six tool calls, six sleeps: the replayed ones are in the record once
    assert described.restarts == 0  # a resumption is not a restart


async def test_a_kernel_killed_at_any_point_reruns_at_most_the_call_in_flight(apps, crashed_kernel, tmp_path) -> None:
    ref, tool, log = tools_app(apps, tmp_path)
    n = 25
    durable_id = crashed_kernel(ref, str(log), n, -1, 0.01, tools=[tool], kill_when=lambda: len(lines(log)) >= 6)
    before = lines(log)
    assert 6 <= len(before) < n

    async with boot(tools=[apps.attribute(tool)]) as kernel:
        assert kernel.durability.resumed == [durable_id]
        status = await kernel.durability.wait(durable_id, timeout=20)
    assert result(status) == [f"LINE{i}" for i in range(n)]
    written = lines(log)
    assert written[:len(before)] == before
    texts = [line.split()[1] for line in written]
    assert sorted(set(texts)) == sorted(f"line{i}" for i in range(n))
    assert len(written) in (n, n + 1)  # the call in flight at the kill may have run twice...
    if len(written) == n + 1:  # ... then with the same key: the one the kill cut off before its record
        assert written[len(before)] == before[-1]


async def test_a_tool_call_cut_off_by_a_crash_runs_again_with_the_same_idempotency_key(
        apps, crashed_kernel, tmp_path, monkeypatch) -> None:
    ref, tool, log = tools_app(apps, tmp_path)
    monkeypatch.setenv("LLMOS_TEST_CRASH_IN_TOOL", "line2")  # the child dies inside the third call
    durable_id = crashed_kernel(ref, str(log), 4, tools=[tool])
    assert [line.split()[1] for line in lines(log)] == ["line0", "line1", "line2"]

    async with boot(tools=[apps.attribute(tool)]) as kernel:
        status = await kernel.durability.wait(durable_id, timeout=20)
    assert result(status) == ["LINE0", "LINE1", "LINE2", "LINE3"]
    keys, texts = zip(*(line.split() for line in lines(log)))
    assert texts == ("line0", "line1", "line2", "line2", "line3")
    assert keys[2] == keys[3]  # the same call, so the same key: a tool can apply it once
    assert len(set(keys)) == 4


async def test_idempotency_keys_reach_tools_of_durable_processes_only(apps, tmp_path) -> None:
    ref = apps.write("keys", """
        import llmos
        from llmos.kernel.journal import idempotency_key
        from llmos.syscalls import ToolContext

        @llmos.tool(read_only=True, sends_data=False, trusted_output=True)
        async def key_of(ctx: ToolContext) -> list:
            return [ctx.idempotency_key, idempotency_key()]

        @llmos.tool(read_only=True, sends_data=False, trusted_output=True)
        def key_in_thread(ctx: ToolContext) -> list:
            return [ctx.idempotency_key, idempotency_key()]

        async def main(sys):
            return [await sys.call_tool("key_of"), await sys.call_tool("key_of"),
                    await sys.call_tool("key_in_thread")]
    """)
    path = ref.rpartition(":")[0]
    tools = [apps.attribute(f"{path}:key_of"), apps.attribute(f"{path}:key_in_thread")]
    async with boot(tools=tools) as kernel:
        info = await kernel.spawn(ref, durable=True)
        durable = result(await kernel.durability.wait(info.durable_id, timeout=10))
        ordinary = result(await spawn_and_wait(kernel, ref))
    (first, first_fn), (second, second_fn), (third, third_fn) = durable
    assert None not in (first, second, third)
    assert len({first, second, third}) == 3
    assert (first_fn, second_fn, third_fn) == (first, second, third)  # the context's key is journal's
    assert all(key.startswith(info.durable_id) for key in (first, second, third))
    assert [ctx_key for ctx_key, _ in ordinary] == [None, None, None]  # no record, no key
    assert len({fresh for _, fresh in ordinary}) == 3  # idempotency_key(): a fresh one each time


async def test_boot_without_resume_lists_the_unfinished_process_and_resume_runs_it(
        apps, crashed_kernel, tmp_path) -> None:
    ref, tool, log = tools_app(apps, tmp_path)
    durable_id = crashed_kernel(ref, str(log), 5, 1, tools=[tool])

    async with boot(tools=[apps.attribute(tool)], resume=False) as kernel:
        assert kernel.durability.started  # there is work in LLMOS_HOME: DBOS started at boot
        assert kernel.durability.resumed == []
        [left] = await kernel.durability.list()
        assert left.id == durable_id
        assert left.state is DurableState.UNFINISHED
        assert left.steps == 4  # two tool calls and two sleeps were recorded
        assert left.pid is None
        await anyio.sleep(0.5)
        assert kernel.ps(include_ended=True) == []
        assert len(lines(log)) == 2  # nothing ran

        resumed = await kernel.durability.resume(durable_id)
        assert resumed.state in (DurableState.RUNNING, DurableState.QUEUED, DurableState.EXITED)
        status = await kernel.durability.wait(durable_id, timeout=20)
        done = await kernel.durability.info(durable_id)
    assert result(status) == [f"LINE{i}" for i in range(5)]
    assert [line.split()[1] for line in lines(log)] == [f"line{i}" for i in range(5)]
    assert done.state is DurableState.EXITED and done.steps == 10


async def test_a_process_whose_app_is_gone_fails_when_resumed(apps, crashed_kernel, tmp_path) -> None:
    ref = apps.write("tools_app", TOOL_APP)
    tool_path = tmp_path / "tool.py"
    tool_path.write_text(Path(ref.rpartition(":")[0]).read_text())
    tool = f"{tool_path}:append_line"
    durable_id = crashed_kernel(ref, str(tmp_path / "log.txt"), 5, 1, tools=[tool],
                                restart={"restart": "on-failure", "max_restarts": 3})
    Path(ref.rpartition(":")[0]).unlink()

    async with boot(tools=[apps.attribute(tool)]) as kernel:
        status = await kernel.durability.wait(durable_id, timeout=20)
        described = await kernel.durability.info(durable_id)
    assert status.state is ProcState.FAILED
    assert "does not exist" in (status.reason or "")
    assert described.state is DurableState.FAILED
    assert described.restarts == 0  # an app that no longer loads is not restarted


# -- a replay that asks something else ---------------------------------------------------------------
DIVERGING = """
import os

async def main(sys):
    await sys.write("one")
    await sys.sleep(0.01)
    await sys.write("two")
    if os.environ.get("LLMOS_TEST_CRASH"):
        os._exit(9)
    await sys.write("three")
    return "v1"
"""


@pytest.mark.parametrize(("changed", "recorded", "asked"), [
    ("await sys.getpid()", "sleep", "getpid"),  # another syscall at a recorded position
    ("await sys.sleep(0.02)", "seconds=0.01", "seconds=0.02"),  # the same one with other arguments
])
async def test_a_replay_that_asks_another_syscall_fails_with_replay_diverged(
        apps, crashed_kernel, changed, recorded, asked) -> None:
    ref = apps.write("diverging", DIVERGING)
    durable_id = crashed_kernel(ref, restart={"restart": "on-failure", "max_restarts": 3})
    apps.rewrite(ref, DIVERGING.replace("await sys.sleep(0.01)", changed).replace('"v1"', '"v2"'))

    async with boot() as kernel:
        assert kernel.durability.resumed == [durable_id]
        status = await kernel.durability.wait(durable_id, timeout=20)
        described = await kernel.durability.info(durable_id)
    assert status.state is ProcState.FAILED
    assert (status.reason or "").startswith("ReplayDiverged")
    assert recorded in status.reason and asked in status.reason
    assert described.state is DurableState.FAILED
    assert described.reason == status.reason
    assert described.restarts == 0  # a diverged run is not restarted: it would diverge again


async def test_a_replay_that_goes_past_the_record_with_new_code_is_fine(apps, crashed_kernel) -> None:
    ref = apps.write("diverging", DIVERGING)
    durable_id = crashed_kernel(ref)
    apps.rewrite(ref, DIVERGING.replace('await sys.write("three")', 'await sys.getpid()'))

    async with boot() as kernel:
        status = await kernel.durability.wait(durable_id, timeout=20)
    assert result(status) == "v1"


async def test_a_diverged_process_fails_even_if_its_app_catches_the_error(apps, crashed_kernel) -> None:
    """The divergence is the record's, not the app's to handle: an app that swallows every
    SyscallError must not end as EXITED with a result made of another run's answers."""
    ref = apps.write("diverging", DIVERGING)
    durable_id = crashed_kernel(ref)
    apps.rewrite(ref, """
        from llmos.syscalls import SyscallError

        async def main(sys):
            done = []
            for call in (sys.write("one"), sys.getpid(), sys.write("two"), sys.write("three")):
                try:
                    await call
                    done.append("ok")
                except SyscallError as exc:
                    done.append(type(exc).__name__)
            return done
    """)

    async with boot() as kernel:
        status = await kernel.durability.wait(durable_id, timeout=20)
        described = await kernel.durability.info(durable_id)
    assert status.state is ProcState.FAILED, (status, described)
    assert described.state is DurableState.FAILED


# -- streamed chats ---------------------------------------------------------------------------------
STREAMER = """
import os

async def main(sys, first, second, marker=None):
    stream = await sys.chat(first, stream=True)
    pieces = []
    async for piece in stream:
        pieces.append(piece)
        if marker:
            with open(marker, "a") as out:
                out.write(piece + "\\n")
    reply = stream.reply
    if marker is None and os.environ.get("LLMOS_TEST_CRASH"):
        os._exit(9)
    again = await sys.chat(second)
    return {"pieces": pieces, "reply": reply.text, "finish": reply.finish_reason, "second": again.text}
"""


async def test_a_streamed_chat_in_a_durable_process_gives_pieces_and_a_reply(apps) -> None:
    ref = apps.write("streamer", STREAMER)
    driver = FakeDriver()
    async with boot(driver) as kernel:
        info = await kernel.spawn(ref, "tell me a story please", "and then?", durable=True)
        out = result(await kernel.durability.wait(info.durable_id, timeout=10))
        described = await kernel.durability.info(info.durable_id)
    assert len(out["pieces"]) > 1  # as they came, not all at once
    assert "".join(out["pieces"]) == out["reply"] == "echo: tell me a story please"
    assert out["finish"] == "stop"
    assert out["second"] == "echo: and then?"
    assert "<assistant>echo: tell me a story please\n<user>and then?" in driver.prompts[1]
    assert described.steps == 2


async def test_a_recorded_stream_is_replayed_piece_by_piece_without_generating(apps, crashed_kernel) -> None:
    ref = apps.write("streamer", STREAMER)
    durable_id = crashed_kernel(ref, "tell me a story please", "and then?", replies=["once upon a time"])

    driver = FakeDriver()
    async with boot(driver) as kernel:
        out = result(await kernel.durability.wait(durable_id, timeout=20))
    assert out["pieces"] == ["once ", "upon ", "a ", "time"]  # the recorded pieces, as they came
    assert out["reply"] == "once upon a time"
    assert out["finish"] == "stop"
    assert out["second"] == "echo: and then?"
    assert len(driver.prompts) == 1  # only the second chat was generated...
    # ... in the conversation the record kept: the first turn is in its prompt
    assert driver.prompts[0].endswith("<user>tell me a story please\n<assistant>once upon a time\n"
                                      "<user>and then?\n<assistant>")


async def test_a_stream_cut_off_by_a_crash_is_generated_again(apps, crashed_kernel, tmp_path) -> None:
    ref = apps.write("streamer", STREAMER)
    marker = tmp_path / "pieces.txt"
    durable_id = crashed_kernel(ref, "one two three four five six seven eight nine ten", "and then?", str(marker),
                                step_delay_s=0.05, kill_when=lambda: len(lines(marker)) >= 3)
    assert 3 <= len(lines(marker)) < 11

    driver = FakeDriver()
    async with boot(driver) as kernel:
        out = result(await kernel.durability.wait(durable_id, timeout=20))
    assert len(driver.prompts) == 2  # nothing was recorded: the stream ran live again
    assert out["reply"] == "echo: one two three four five six seven eight nine ten"
    assert len(out["pieces"]) > 1
    assert out["second"] == "echo: and then?"


async def test_a_replayed_stream_whose_pieces_were_each_written_resumes(apps, crashed_kernel) -> None:
    """The usual way to show a streamed reply: one `write` per piece. The writes made while
    the stream is open belong to the stream (they are not steps of their own): replayed, the
    stream gives its recorded pieces and the app's writes of them are not shown again; the
    resume does not diverge over them."""
    ref = apps.write("printer", """
        import os

        async def main(sys):
            stream = await sys.chat("one two three four", stream=True)
            async for piece in stream:
                await sys.write(piece)
            await sys.sleep(0.01)
            if os.environ.get("LLMOS_TEST_CRASH"):
                os._exit(9)
            again = await sys.chat("more")
            return [stream.reply.text, again.text]
    """)
    durable_id = crashed_kernel(ref)

    async with boot() as kernel:
        status = await kernel.durability.wait(durable_id, timeout=20)
    assert result(status) == ["echo: one two three four", "echo: more"]


async def test_leaving_a_stream_early_does_as_an_ordinary_process_does(apps) -> None:
    ref = apps.write("early", """
        async def main(sys):
            stream = await sys.chat("one two three four five six seven eight", stream=True)
            async for piece in stream:
                first = piece
                break
            again = await sys.chat("next")
            return [first, again.text]
    """)
    ordinary, durable = FakeDriver(step_delay_s=0.01), FakeDriver(step_delay_s=0.01)
    async with boot(ordinary) as kernel:
        plain = result(await spawn_and_wait(kernel, ref, timeout=10))
    async with boot(durable) as kernel:
        info = await kernel.spawn(ref, durable=True)
        recorded = result(await kernel.durability.wait(info.durable_id, timeout=10))
    assert recorded == plain == ["echo: ", "echo: next"]
    assert durable.prompts == ordinary.prompts  # the cut-off reply did not join the conversation


# -- what a replay must put back in the kernel ----------------------------------------------------------
async def test_a_resumed_process_is_still_subscribed_to_its_topics(apps, crashed_kernel, tmp_path) -> None:
    """`subscribe` is answered from the record on replay; the subscription itself lives in
    the kernel, which a resumed process must have again, or it never hears the topic."""
    ref = apps.write("subscriber", """
        import os

        async def main(sys, ready):
            await sys.subscribe("news")
            await sys.sleep(0.01)
            if os.environ.get("LLMOS_TEST_CRASH"):
                os._exit(9)
            open(ready, "w").close()
            message = await sys.recv(timeout=5)
            return message.payload
    """)
    ready = tmp_path / "ready"
    durable_id = crashed_kernel(ref, str(ready))

    async with boot() as kernel:
        await until(ready.exists, timeout=10)
        delivered = kernel.publish("news", {"headline": "resumed"})
        status = await kernel.durability.wait(durable_id, timeout=20)
    assert delivered == 1
    assert result(status) == {"headline": "resumed"}


async def test_a_resumed_process_keeps_the_priority_it_set_itself(apps, crashed_kernel) -> None:
    ref = apps.write("nicer", """
        import os

        async def main(sys):
            await sys.nice(7)
            await sys.sleep(0.01)
            if os.environ.get("LLMOS_TEST_CRASH"):
                os._exit(9)
            me = await sys.getpid()
            return [p.priority for p in await sys.ps() if p.pid == me or p.name == "main"]
    """)
    durable_id = crashed_kernel(ref)

    async with boot() as kernel:
        status = await kernel.durability.wait(durable_id, timeout=20)
    assert result(status) == [7]


async def test_a_recorded_wait_for_an_ordinary_child_is_replayed_without_its_child(
        apps, crashed_kernel) -> None:
    """A durable process without proc.admin spawned and waited for an ordinary child; after
    a crash later on, that `wait` is in the record and must be answered from it, though the
    child (and its pid) belonged to the kernel that died."""
    child = apps.write("child", """
        async def main(sys):
            await sys.sleep(0.05)
            return "child result"
    """)
    parent = apps.write("parent", f"""
        import os

        async def main(sys):
            info = await sys.spawn({child!r}, name="child")
            status = await sys.wait(info.pid, 10)
            await sys.sleep(0.01)
            if os.environ.get("LLMOS_TEST_CRASH"):
                os._exit(9)
            return status.result
    """)
    durable_id = crashed_kernel(parent, caps=["proc.spawn", "proc.exec"])

    async with boot() as kernel:
        status = await kernel.durability.wait(durable_id, timeout=20)
    assert result(status) == "child result"


# -- durable parents and children ----------------------------------------------------------------------
async def test_a_durable_parents_spawn_is_replayed_and_its_child_resumed_not_started_twice(
        apps, crashed_kernel, tmp_path) -> None:
    child = apps.write("child", """
        async def main(sys, rounds):
            for _ in range(rounds):
                await sys.sleep(0.02)
            return rounds
    """)
    parent = apps.write("parent", f"""
        import os

        async def main(sys):
            info = await sys.spawn({child!r}, 20, durable=True, name="child")
            await sys.sleep(0.1)
            if os.environ.get("LLMOS_TEST_CRASH"):
                os._exit(9)
            status = await sys.durable.wait(info.durable_id, timeout=20)
            return [info.durable_id, status.result]
    """)
    parent_id = crashed_kernel(parent)

    async with boot() as kernel:
        assert parent_id in kernel.durability.resumed
        child_id, rounds = result(await kernel.durability.wait(parent_id, timeout=30))
        listed = await kernel.durability.list()
    assert rounds == 20
    assert sorted(d.id for d in listed) == sorted([parent_id, child_id])  # one child, not two
    assert {d.id: d.state for d in listed} == {parent_id: DurableState.EXITED, child_id: DurableState.EXITED}
    assert next(d for d in listed if d.id == child_id).steps == 20


async def test_pids_from_before_a_resume_name_the_same_process_or_none(apps, crashed_kernel) -> None:
    """After a resume, the process's own old pid (from a replayed getpid) names it still,
    and an ordinary child's (from a replayed spawn) is refused with ESRCH, rather than
    reaching whichever process has that number in the new kernel."""
    child = apps.write("sleeper", """
        async def main(sys):
            await sys.sleep(60)
    """)
    parent = apps.write("parent", f"""
        import os
        from llmos.syscalls import NoSuchProcess

        async def main(sys):
            me = await sys.getpid()
            info = await sys.spawn({child!r}, name="sleeper")
            await sys.sleep(0.01)
            if os.environ.get("LLMOS_TEST_CRASH"):
                os._exit(9)
            await sys.nice(5, me)  # the pid it got before the crash
            try:
                await sys.kill(info.pid)
                refused = None
            except NoSuchProcess as exc:
                refused = exc.message
            return [me, refused]
    """)
    durable_id = crashed_kernel(parent, caps=["proc.spawn", "proc.exec"])

    async with boot() as kernel:
        for _ in range(3):  # occupy low pids, so the old numbers name other processes here
            await kernel.spawn(child)
        status = await kernel.durability.wait(durable_id, timeout=20)
        resumed = [p for p in kernel.ps(include_ended=True) if p.durable_id == durable_id]
    old_pid, refused = result(status)
    assert refused is not None and "died" in refused
    assert resumed and resumed[0].priority == 5 and resumed[0].pid != old_pid


# Notes (appends) when its sleep begins, in this run and in every replay, and returns when it woke.
SLEEPY_APP = """
import time

async def main(sys, seconds, marker):
    await sys.getpid()
    with open(marker, "a") as notes:
        notes.write(f"{time.time()}\\n")
    await sys.sleep(float(seconds))
    return time.time()
"""


async def test_a_durable_sleep_cut_by_a_crash_ends_when_it_was_to_end(apps, crashed_kernel, tmp_path) -> None:
    marker, seconds = tmp_path / "sleep-began.txt", 3.0
    ref = apps.write("sleepy_app", SLEEPY_APP)
    durable_id = crashed_kernel(ref, str(seconds), str(marker),
                                kill_when=lambda: bool(lines(marker)) and time.time() - float(lines(marker)[0]) > 1)
    async with boot() as kernel:
        status = await kernel.durability.wait(durable_id, timeout=30)
    first, resumed = (float(line) for line in lines(marker))
    woke = result(status)
    assert woke >= first + seconds  # not sooner than it asked
    assert woke - resumed < seconds - 0.5  # the rest of the sleep, not the whole of it again
