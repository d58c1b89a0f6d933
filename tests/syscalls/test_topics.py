"""Named topics: publish reaches every live subscriber, a copy each; ended processes drop out."""

from __future__ import annotations

import llmos
from llmos.syscalls import DEFAULT_APP_CAPS, InvalidRequest, PermissionDenied
from llmos.testing import FakeDriver, caught, result, spawn_and_wait, until


async def listener(sys, topic, n=1):  # noqa: ANN001, ANN201
    await sys.subscribe(topic)
    return [(m.topic, m.sender_name, m.payload) for m in [await sys.recv(timeout=2) for _ in range(n)]]


async def test_publish_reaches_every_subscriber() -> None:
    async def announcer(sys):  # noqa: ANN001
        return await sys.publish("news", {"headline": "llmos boots"})

    async with llmos.boot(FakeDriver()) as kernel:
        a = await kernel.spawn(listener, "news", name="a")
        b = await kernel.spawn(listener, "news", name="b")
        await until(lambda: kernel.topics.get("news") == {a.pid, b.pid})
        delivered = result(await spawn_and_wait(kernel, announcer, name="announcer"))
        got = [result(await kernel.wait(p.pid)) for p in (a, b)]
    assert delivered == 2
    assert got == [[("news", "announcer", {"headline": "llmos boots"})]] * 2


async def test_publish_without_subscribers_delivers_to_nobody() -> None:
    async def announcer(sys):  # noqa: ANN001
        return await sys.publish("empty", 1)

    async with llmos.boot(None) as kernel:
        assert result(await spawn_and_wait(kernel, announcer)) == 0


async def test_unsubscribe_and_exit_leave_the_topic() -> None:
    async def fickle(sys):  # noqa: ANN001
        await sys.subscribe("t")
        await sys.unsubscribe("t")
        await sys.subscribe("u")

    async with llmos.boot(None) as kernel:
        result(await spawn_and_wait(kernel, fickle))
        assert kernel.topics == {}


async def test_each_subscriber_gets_its_own_copy() -> None:
    async def mutator(sys):  # noqa: ANN001
        await sys.subscribe("t")
        message = await sys.recv(timeout=2)
        message.payload["items"].append("mine")
        return message.payload

    async def publisher(sys, payload):  # noqa: ANN001
        return await sys.publish("t", payload)

    payload = {"items": []}
    async with llmos.boot(None) as kernel:
        procs = [await kernel.spawn(mutator) for _ in range(2)]
        await until(lambda: len(kernel.topics.get("t", ())) == 2)
        assert result(await spawn_and_wait(kernel, publisher, payload)) == 2
        got = [result(await kernel.wait(p.pid)) for p in procs]
    assert got == [{"items": ["mine"]}] * 2 and payload == {"items": []}


async def test_topics_need_the_ipc_capability_and_a_name() -> None:
    async def main(sys):  # noqa: ANN001
        return [await caught(sys.subscribe("t")), await caught(sys.publish("", 1))]

    async with llmos.boot(None) as kernel:
        denied, = result(await spawn_and_wait(kernel, main, caps={"proc.spawn"}))[:1]
        assert isinstance(denied, PermissionDenied)
        _, bad = result(await spawn_and_wait(kernel, main, caps=DEFAULT_APP_CAPS))
        assert isinstance(bad, InvalidRequest)


async def test_a_full_mailbox_misses_a_publication_without_failing_the_publisher(monkeypatch) -> None:
    from llmos.kernel import params

    monkeypatch.setattr(params, "MAILBOX_SIZE", 1)

    async def publisher(sys):  # noqa: ANN001
        return [await sys.publish("t", i) for i in range(3)]

    async def deaf(sys):  # noqa: ANN001
        await sys.subscribe("t")
        await sys.sleep(10)

    async with llmos.boot(None) as kernel:
        sleeper = await kernel.spawn(deaf)
        await until(lambda: kernel.topics.get("t") == {sleeper.pid})
        counts = result(await spawn_and_wait(kernel, publisher))
    assert counts == [1, 0, 0]
