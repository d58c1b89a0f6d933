"""Generation syscalls on the scripted FakeDriver: chat, generate, streaming, limits, failures, batching."""

from __future__ import annotations

from typing import Any

import pytest

import llmos
from llmos.syscalls import (
    ChatMessage,
    ContextOverflow,
    DEFAULT_APP_CAPS,
    Errno,
    InvalidRequest,
    ModelError,
    PermissionDenied,
    Reply,
    TextStream,
)
from llmos.testing import FakeDriver, caught, result, spawn_and_wait, until


def chat_prompt(*turns: tuple[str, str]) -> str:
    return "".join(f"<{role}>{text}\n" for role, text in turns) + "<assistant>"


# -- chat ------------------------------------------------------------------------------------------
async def test_chat_returns_a_reply() -> None:
    driver = FakeDriver()
    driver.enqueue("Paris is the capital.")

    async def main(sys):  # noqa: ANN001
        return await sys.chat("Capital of France?")

    async with llmos.boot(driver) as kernel:
        reply = result(await spawn_and_wait(kernel, main))
    prompt = chat_prompt(("user", "Capital of France?"))
    assert isinstance(reply, Reply)
    assert reply.text == "Paris is the capital."
    assert reply.finish_reason == "stop"
    assert reply.prompt_tokens == len(prompt)
    assert reply.completion_tokens == 4
    assert reply.model == "fake"
    assert reply.elapsed_s > 0
    assert reply.first_token_s is not None and 0 <= reply.first_token_s <= reply.elapsed_s
    assert driver.prompts == [prompt]


async def test_chat_keeps_the_conversation_per_process() -> None:
    driver = FakeDriver(script=lambda prompt: f"reply#{prompt.count('<user>')}")

    async def main(sys, first, second):  # noqa: ANN001
        a = await sys.chat(first)
        b = await sys.chat(second)
        return a.text, b.text

    async with llmos.boot(driver) as kernel:
        one = result(await spawn_and_wait(kernel, main, "hi", "again"))
        other = result(await spawn_and_wait(kernel, main, "hola", "otra vez"))
    assert one == ("reply#1", "reply#2")
    assert other == ("reply#1", "reply#2")  # a fresh process starts a fresh conversation
    assert driver.prompts == [
        chat_prompt(("user", "hi")),
        chat_prompt(("user", "hi"), ("assistant", "reply#1"), ("user", "again")),
        chat_prompt(("user", "hola")),
        chat_prompt(("user", "hola"), ("assistant", "reply#1"), ("user", "otra vez")),
    ]


async def test_chat_with_explicit_messages_leaves_the_history_untouched() -> None:
    driver = FakeDriver()

    async def main(sys):  # noqa: ANN001
        await sys.chat("first")
        stateless = await sys.chat(messages=[{"role": "user", "content": "aside"},
                                             ChatMessage(role="assistant", content="ok"),
                                             {"role": "user", "content": "more"}])
        await sys.chat("second")
        return stateless.text

    async with llmos.boot(driver) as kernel:
        text = result(await spawn_and_wait(kernel, main))
    assert text == "echo: more"
    assert driver.prompts == [
        chat_prompt(("user", "first")),
        chat_prompt(("user", "aside"), ("assistant", "ok"), ("user", "more")),
        chat_prompt(("user", "first"), ("assistant", "echo: first"), ("user", "second")),
    ]


async def test_system_prompt_comes_first_and_is_not_remembered() -> None:
    driver = FakeDriver()

    async def main(sys):  # noqa: ANN001
        await sys.chat("hi", system="Be brief.")
        await sys.chat("again")
        await sys.chat(messages=[{"role": "user", "content": "x"}], system="Stateless.")

    async with llmos.boot(driver) as kernel:
        result(await spawn_and_wait(kernel, main))
    assert driver.prompts == [
        chat_prompt(("system", "Be brief."), ("user", "hi")),
        chat_prompt(("user", "hi"), ("assistant", "echo: hi"), ("user", "again")),
        chat_prompt(("system", "Stateless."), ("user", "x")),
    ]


async def test_stop_strings_cut_the_reply() -> None:
    driver = FakeDriver()
    driver.enqueue("alpha beta STOP gamma delta", "one two three")

    async def main(sys):  # noqa: ANN001
        cut = await sys.chat("go", stop=["STOP"])
        await sys.chat("next")
        return cut

    async with llmos.boot(driver) as kernel:
        cut = result(await spawn_and_wait(kernel, main))
    assert cut.text == "alpha beta "
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens == 3  # decoding ended at the word holding the stop string
    assert driver.prompts[1] == chat_prompt(("user", "go"), ("assistant", "alpha beta "), ("user", "next"))


async def test_max_tokens_ends_with_finish_reason_length() -> None:
    driver = FakeDriver()
    driver.enqueue("a b c d e f g h")

    async def main(sys):  # noqa: ANN001
        short = await sys.chat("go", max_tokens=3)
        await sys.chat("next")
        return short

    async with llmos.boot(driver) as kernel:
        short = result(await spawn_and_wait(kernel, main))
    assert short.finish_reason == "length"
    assert short.completion_tokens == 3
    assert short.text == "a b c "
    # a reply cut by length still joins the conversation
    assert driver.prompts[1] == chat_prompt(("user", "go"), ("assistant", "a b c "), ("user", "next"))


async def test_generate_continues_raw_text_without_a_template_or_history() -> None:
    driver = FakeDriver()
    driver.enqueue("upon a time")

    async def main(sys):  # noqa: ANN001
        reply = await sys.generate("Once")
        await sys.chat("hi")
        return reply

    async with llmos.boot(driver) as kernel:
        reply = result(await spawn_and_wait(kernel, main))
    assert driver.prompts == ["Once", chat_prompt(("user", "hi"))]
    assert (reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens) == \
        ("upon a time", "stop", 4, 3)


# -- streaming ------------------------------------------------------------------------------------
async def test_streaming_chat_yields_pieces_then_the_reply() -> None:
    driver = FakeDriver()
    driver.enqueue("one two three four five")

    async def main(sys):  # noqa: ANN001
        stream = await sys.chat("count", stream=True)
        before = stream.reply
        pieces = [piece async for piece in stream]
        await sys.chat("more")
        return stream, before, pieces

    async with llmos.boot(driver) as kernel:
        stream, before, pieces = result(await spawn_and_wait(kernel, main))
    assert isinstance(stream, TextStream)
    assert before is None
    assert pieces == ["one ", "two ", "three ", "four ", "five"]
    assert stream.reply is not None
    assert "".join(pieces) == stream.reply.text == "one two three four five"
    assert stream.reply.finish_reason == "stop"
    assert stream.reply.completion_tokens == 5
    assert driver.prompts[1] == chat_prompt(("user", "count"), ("assistant", "one two three four five"),
                                            ("user", "more"))


async def test_streaming_generate_and_text_helper() -> None:
    driver = FakeDriver()
    driver.enqueue("a b c")

    async def main(sys):  # noqa: ANN001
        stream = await sys.generate("x", stream=True)
        return await stream.text(), stream.reply

    async with llmos.boot(driver) as kernel:
        text, reply = result(await spawn_and_wait(kernel, main))
    assert text == "a b c" == reply.text


async def test_streaming_with_stop_strings_never_streams_past_the_stop() -> None:
    driver = FakeDriver()
    driver.enqueue("keep this END drop that")

    async def main(sys):  # noqa: ANN001
        stream = await sys.chat("go", stream=True, stop=["END"])
        return [p async for p in stream], stream.reply

    async with llmos.boot(driver) as kernel:
        pieces, reply = result(await spawn_and_wait(kernel, main))
    assert "".join(pieces) == reply.text == "keep this "


async def test_leaving_a_stream_early_cancels_the_generation() -> None:
    driver = FakeDriver(step_delay_s=0.002)
    driver.enqueue(" ".join(f"w{i}" for i in range(300)))

    async def main(sys):  # noqa: ANN001
        stream = await sys.chat("go", stream=True)
        got = []
        async for piece in stream:
            got.append(piece)
            if len(got) == 3:
                break
        await stream.aclose()
        await until(lambda: driver.jobs[0].finish_reason == "cancelled")  # dropped at the engine's next step
        after = await sys.chat("hi")
        return got, stream.reply, after.text

    async with llmos.boot(driver) as kernel:
        got, reply, after = result(await spawn_and_wait(kernel, main))
    assert got == ["w0 ", "w1 ", "w2 "]
    assert reply is None
    assert after == "echo: hi"
    first = driver.jobs[0]
    assert first.cancelled and first.finish_reason == "cancelled"
    assert len(first.token_ids) < 150


# -- errors ----------------------------------------------------------------------------------------
async def test_context_overflow_is_e2big_and_the_process_goes_on() -> None:
    driver = FakeDriver(context_length=40)

    async def main(sys):  # noqa: ANN001
        err = await caught(sys.chat("x" * 100))
        ok = await sys.chat("hi")
        return err, ok

    async with llmos.boot(driver) as kernel:
        err, ok = result(await spawn_and_wait(kernel, main))
    assert type(err) is ContextOverflow
    assert err.code is Errno.E2BIG
    assert "context window is 40" in err.message
    assert ok.text == "echo: hi"
    assert driver.prompts == [chat_prompt(("user", "hi"))]  # the long turn never joined the history


async def test_the_reply_is_capped_to_the_context_left() -> None:
    prompt = chat_prompt(("user", "hi"))
    driver = FakeDriver(context_length=len(prompt) + 2)
    driver.enqueue("a b c d e f")

    async def main(sys):  # noqa: ANN001
        return await sys.chat("hi")

    async with llmos.boot(driver) as kernel:
        reply = result(await spawn_and_wait(kernel, main))
    assert (reply.finish_reason, reply.completion_tokens, reply.text) == ("length", 2, "a b ")


async def test_a_failing_driver_is_eio_for_the_process_and_the_kernel_goes_on() -> None:
    driver = FakeDriver(fail_with=RuntimeError("GPU on fire"))

    async def talker(sys):  # noqa: ANN001
        err = await caught(sys.chat("hi"))
        return err

    async def bystander(sys):  # noqa: ANN001
        await sys.sleep(0.02)
        return "fine"

    async def retry(sys):  # noqa: ANN001
        return await sys.chat("hi again")

    async with llmos.boot(driver) as kernel:
        b = await kernel.spawn(bystander)
        err = result(await spawn_and_wait(kernel, talker))
        assert result(await kernel.wait(b.pid)) == "fine"
        err_again = result(await spawn_and_wait(kernel, talker))  # the generation loop survived
        driver.fail_with = None
        reply = result(await spawn_and_wait(kernel, retry))
    assert type(err) is ModelError
    assert err.code is Errno.EIO
    assert "RuntimeError: GPU on fire" in err.message
    assert type(err_again) is ModelError
    assert reply.text == "echo: hi again"


async def test_a_failed_chat_does_not_join_the_history() -> None:
    driver = FakeDriver(fail_with=ValueError("bad"))

    async def main(sys):  # noqa: ANN001
        err = await caught(sys.chat("lost"))
        driver.fail_with = None
        await sys.chat("kept")
        return err

    async with llmos.boot(driver) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is ModelError
    assert driver.prompts[-1] == chat_prompt(("user", "kept"))


async def test_a_failing_driver_surfaces_at_the_end_of_a_stream() -> None:
    driver = FakeDriver(fail_with=RuntimeError("boom"))

    async def main(sys):  # noqa: ANN001
        stream = await sys.chat("hi", stream=True)
        pieces = []
        try:
            async for piece in stream:
                pieces.append(piece)
        except ModelError as exc:
            return pieces, exc
        return pieces, None

    async with llmos.boot(driver) as kernel:
        pieces, err = result(await spawn_and_wait(kernel, main))
    assert pieces == []
    assert type(err) is ModelError and "boom" in err.message


async def test_a_kernel_without_a_model_is_eio() -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.chat("hi")), await caught(sys.generate("hi"))

    async with llmos.boot(None) as kernel:
        assert kernel.generation is None
        errors = result(await spawn_and_wait(kernel, main))
    for err in errors:
        assert type(err) is ModelError
        assert err.code is Errno.EIO
        assert "no model" in err.message


async def test_chat_and_generate_need_the_model_capability() -> None:
    driver = FakeDriver()

    async def child(sys):  # noqa: ANN001
        return await caught(sys.chat("hi")), await caught(sys.generate("hi"))

    async def parent(sys):  # noqa: ANN001
        kid = await sys.spawn(child, caps=["ipc"])
        return (await sys.wait(kid.pid)).result

    async with llmos.boot(driver) as kernel:
        errors = result(await spawn_and_wait(kernel, parent, caps=DEFAULT_APP_CAPS))
    for err in errors:
        assert type(err) is PermissionDenied
        assert err.code is Errno.EPERM
        assert "'model.generate'" in err.message
    assert driver.prompts == []


@pytest.mark.parametrize(("args", "options"), [
    ((), {}),  # neither message nor messages
    (("hi",), {"messages": [{"role": "user", "content": "x"}]}),  # both
    ((), {"messages": []}),
    ((), {"messages": [{"role": "wizard", "content": "x"}]}),
    ((), {"messages": [{"role": "user"}]}),
    (("hi",), {"max_tokens": 0}),
    (("hi",), {"temperature": -1}),
    (("hi",), {"top_p": 0}),
    (("hi",), {"stop": [str(i) for i in range(17)]}),
    (("hi",), {"bogus_option": 1}),
    ((42,), {}),
])
async def test_bad_chat_arguments_are_einval(args: tuple[Any, ...], options: dict[str, Any]) -> None:
    driver = FakeDriver()

    async def main(sys):  # noqa: ANN001
        return await caught(sys.chat(*args, **options))

    async with llmos.boot(driver) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is InvalidRequest
    assert err.code is Errno.EINVAL
    assert "bad arguments to 'chat'" in err.message
    assert driver.prompts == []


@pytest.mark.parametrize("prompt", ["", None, 3])
async def test_bad_generate_prompt_is_einval(prompt: Any) -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.generate(prompt))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is InvalidRequest


# -- batching and scheduling -------------------------------------------------------------------------
async def test_processes_chatting_at_once_share_one_batch() -> None:
    driver = FakeDriver()

    async def main(sys, n):  # noqa: ANN001
        return (await sys.chat(f"q{n}")).text

    async with llmos.boot(driver) as kernel:
        infos = [await kernel.spawn(main, n) for n in range(4)]
        texts = [result(await kernel.wait(i.pid)) for i in infos]
    assert texts == [f"echo: q{n}" for n in range(4)]
    # two words each: two steps, all four in each (admitted in the order their prompts were ready)
    assert [sorted(b) for b in driver.batches] == [[1, 2, 3, 4]] * 2


async def test_max_batch_splits_the_work() -> None:
    driver = FakeDriver()

    async def main(sys, n):  # noqa: ANN001
        return (await sys.chat(f"q{n}")).text

    async with llmos.boot(driver, max_batch=2) as kernel:
        infos = [await kernel.spawn(main, n) for n in range(5)]
        texts = [result(await kernel.wait(i.pid)) for i in infos]
    assert texts == [f"echo: q{n}" for n in range(5)]
    steps = [sorted(b) for b in driver.batches]  # a slot frees, the next request joins at once
    assert [len(b) for b in steps] == [2, 2, 2, 2, 1, 1]
    assert steps[0] == steps[1] and steps[2] == steps[3] and steps[4] == steps[5]
    assert sorted(steps[0] + steps[2] + steps[4]) == [1, 2, 3, 4, 5]


async def test_round_robin_alternates_by_quantum() -> None:
    driver = FakeDriver()
    driver.enqueue("a0 a1 a2 a3 a4 a5", "b0 b1 b2 b3 b4 b5")

    async def main(sys):  # noqa: ANN001
        return (await sys.chat("go")).text

    async with llmos.boot(driver, policy="rr", quantum=2, max_batch=1) as kernel:
        infos = [await kernel.spawn(main) for _ in range(2)]
        texts = sorted([result(await kernel.wait(i.pid)) for i in infos])
    assert texts == ["a0 a1 a2 a3 a4 a5", "b0 b1 b2 b3 b4 b5"]
    first, second = driver.batches[0][0], driver.batches[2][0]
    assert first != second
    assert driver.batches == ([[first]] * 2 + [[second]] * 2) * 3  # two tokens each turn


async def test_priority_policy_serves_the_most_important_waiting_request_first() -> None:
    driver = FakeDriver(script=lambda prompt: "done", step_delay_s=0.002)
    driver.enqueue(" ".join(["busy"] * 30))

    async def main(sys, tag):  # noqa: ANN001
        return (await sys.chat(tag)).text

    async with llmos.boot(driver, policy="priority", max_batch=1) as kernel:
        blocker = await kernel.spawn(main, "blocker")
        await until(lambda: len(driver.batches) >= 1)
        infos = [await kernel.spawn(main, tag, priority=nice)
                 for tag, nice in (("low", 10), ("high", -10), ("mid", 0))]
        for info in (blocker, *infos):
            result(await kernel.wait(info.pid))
        preemptions = kernel.scheduler.preemptions
    order = [p.removeprefix("<user>").split("\n")[0] for p in driver.prompts]
    assert order == ["blocker", "high", "mid", "low"]
    assert preemptions == 1  # "high" took the blocker's slot; the blocker resumed before "mid"


async def test_nice_reorders_a_waiting_generation() -> None:
    driver = FakeDriver(script=lambda prompt: "done", step_delay_s=0.002)
    driver.enqueue(" ".join(["busy"] * 30))

    async def main(sys, tag):  # noqa: ANN001
        return (await sys.chat(tag)).text

    async with llmos.boot(driver, policy="priority", max_batch=1) as kernel:
        blocker = await kernel.spawn(main, "blocker")
        await until(lambda: len(driver.batches) >= 1)
        a = await kernel.spawn(main, "a")
        b = await kernel.spawn(main, "b")
        await until(lambda: kernel.scheduler.statistics().waiting == 2)
        kernel.nice(b.pid, -5)
        for info in (blocker, a, b):
            result(await kernel.wait(info.pid))
    order = [p.removeprefix("<user>").split("\n")[0] for p in driver.prompts]
    assert order == ["blocker", "b", "a"]


async def test_generation_statistics_count_steps_tokens_and_queue() -> None:
    driver = FakeDriver()

    async def main(sys, n):  # noqa: ANN001
        return (await sys.chat(f"q{n}")).text

    async with llmos.boot(driver) as kernel:
        for info in [await kernel.spawn(main, n) for n in range(3)]:
            result(await kernel.wait(info.pid))
        stats = kernel.generation.statistics()
    assert stats.steps == 2 and stats.tokens == 6  # "echo: qN" is two words
    assert stats.scheduler.running == 0 and stats.scheduler.waiting == 0 and stats.model == "fake"
    assert stats.tokens_per_s == pytest.approx(6 / 5.0)


async def test_a_json_schema_reply_is_asked_for_by_its_keys_and_closed_to_others() -> None:
    driver = FakeDriver(lambda prompt: '{"city": "Paris"}')
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

    async def main(sys):  # noqa: ANN001
        await sys.chat("Largest city of France?", json_schema=schema, system="Be brief.")
        await sys.chat(messages=[ChatMessage(role="system", content="Be brief."),
                                 ChatMessage(role="user", content="Largest city of France?")], json_schema=schema)
        await sys.chat("And of Spain?")  # the shape was for that one reply, not the conversation

    async with llmos.boot(driver, embedder=None) as kernel:
        result(await spawn_and_wait(kernel, main))
    in_window, stateless, after = driver.jobs
    for job in (in_window, stateless):
        assert job.sampling.json_schema == {**schema, "additionalProperties": False}
        system = [m for m in job.messages if m.role == "system"]
        assert len(system) == 1 and system[0].content.startswith("Be brief.\n\nReply with one JSON object")
        assert "- city: string" in system[0].content
    assert after.sampling.json_schema is None and all("JSON" not in m.content for m in after.messages)
