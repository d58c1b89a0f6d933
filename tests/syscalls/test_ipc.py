"""Message passing: send to a pid or a unique name, recv with a timeout, copies, full mailboxes."""

from __future__ import annotations

import time
from typing import Any

import pytest

import llmos
from llmos.kernel import params
from llmos.syscalls import (
    AmbiguousName,
    DEFAULT_APP_CAPS,
    Errno,
    InvalidRequest,
    MailboxFull,
    Message,
    NoSuchProcess,
    PermissionDenied,
    ProcState,
    Timeout,
)
from llmos.testing import FakeDriver, caught, result, spawn_and_wait, until_state


async def receiver(sys, n=1, timeout=2):  # noqa: ANN001, ANN201
    return [await sys.recv(timeout=timeout) for _ in range(n)]


async def idle(sys):  # noqa: ANN001, ANN201
    await sys.sleep(10)


async def test_send_by_pid_and_recv() -> None:
    async def sender(sys, to):  # noqa: ANN001
        return await sys.send(to, {"task": "sum", "values": [1, 2, 3]})

    async with llmos.boot(FakeDriver()) as kernel:
        r = await kernel.spawn(receiver, name="inbox")
        s = await kernel.spawn(sender, r.pid, name="outbox")
        sent = result(await kernel.wait(s.pid))
        [got] = result(await kernel.wait(r.pid))
    assert isinstance(got, Message)
    assert (got.sender, got.sender_name) == (s.pid, "outbox")
    assert got.payload == {"task": "sum", "values": [1, 2, 3]}
    assert sent.payload == got.payload
    assert abs(got.sent_at - time.time()) < 5


async def test_messages_arrive_in_order() -> None:
    async def sender(sys, to):  # noqa: ANN001
        for i in range(20):
            await sys.send(to, i)

    async with llmos.boot(FakeDriver()) as kernel:
        r = await kernel.spawn(receiver, 20)
        result(await spawn_and_wait(kernel, sender, r.pid))
        got = result(await kernel.wait(r.pid))
    assert [m.payload for m in got] == list(range(20))


async def test_send_by_unique_name() -> None:
    async def sender(sys):  # noqa: ANN001
        return await sys.send("mailman", "hello")

    async with llmos.boot(FakeDriver()) as kernel:
        r = await kernel.spawn(receiver, name="mailman")
        message = result(await spawn_and_wait(kernel, sender))
        [got] = result(await kernel.wait(r.pid))
    assert got.payload == "hello" == message.payload


async def test_send_to_an_ambiguous_name_is_enotuniq() -> None:
    async def sender(sys):  # noqa: ANN001
        return await caught(sys.send("twin", 1))

    async with llmos.boot(FakeDriver()) as kernel:
        a = await kernel.spawn(idle, name="twin")
        b = await kernel.spawn(idle, name="twin")
        err = result(await spawn_and_wait(kernel, sender))
        kernel.kill(a.pid)
        kernel.kill(b.pid)
    assert type(err) is AmbiguousName
    assert err.code is Errno.ENOTUNIQ
    assert str(a.pid) in err.message and str(b.pid) in err.message


async def test_send_to_a_missing_name_or_pid_is_esrch() -> None:
    async def quick(sys):  # noqa: ANN001
        return None

    async def sender(sys, ended_pid):  # noqa: ANN001
        return (await caught(sys.send("nobody-by-this-name", 1)), await caught(sys.send(99999, 1)),
                await caught(sys.send(ended_pid, 1)))

    async with llmos.boot(FakeDriver()) as kernel:
        ended = await kernel.spawn(quick)
        await until_state(kernel, ended.pid)
        by_name, by_pid, to_ended = result(await spawn_and_wait(kernel, sender, ended.pid))
    for err in (by_name, by_pid, to_ended):
        assert type(err) is NoSuchProcess
        assert err.code is Errno.ESRCH
    assert "nobody-by-this-name" in by_name.message
    assert "EXITED" in to_ended.message


async def test_a_name_is_unique_again_once_the_other_ended() -> None:
    async def quick(sys):  # noqa: ANN001
        return None

    async def sender(sys):  # noqa: ANN001
        return await sys.send("solo", "still here")

    async with llmos.boot(FakeDriver()) as kernel:
        await spawn_and_wait(kernel, quick, name="solo")
        r = await kernel.spawn(receiver, name="solo")
        result(await spawn_and_wait(kernel, sender))
        [got] = result(await kernel.wait(r.pid))
    assert got.payload == "still here"


async def test_recv_timeout_is_etimedout() -> None:
    async def main(sys):  # noqa: ANN001
        began = time.perf_counter()
        err = await caught(sys.recv(timeout=0.05))
        return err, time.perf_counter() - began

    async with llmos.boot(FakeDriver()) as kernel:
        err, waited = result(await spawn_and_wait(kernel, main))
    assert type(err) is Timeout
    assert err.code is Errno.ETIMEDOUT
    assert 0.045 <= waited < 1


async def test_recv_with_a_negative_timeout_is_einval() -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.recv(timeout=-1))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is InvalidRequest


async def test_recv_with_zero_timeout_polls_a_waiting_message() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.send(sys.pid, "queued")
        return (await sys.recv(timeout=0)).payload

    async with llmos.boot(FakeDriver()) as kernel:
        assert result(await spawn_and_wait(kernel, main)) == "queued"


async def test_a_waiting_receiver_shows_blocked_and_wakes_on_a_message() -> None:
    async with llmos.boot(FakeDriver()) as kernel:
        r = await kernel.spawn(receiver, 1, None)
        state = (await until_state(kernel, r.pid, ProcState.BLOCKED)).state
        message = kernel.send(r.pid, ["from", "the", "kernel"])
        [got] = result(await kernel.wait(r.pid, timeout=1))
    assert state is ProcState.BLOCKED
    assert (got.sender, got.sender_name, got.payload) == (0, "kernel", ["from", "the", "kernel"])
    assert message == got


async def test_send_to_yourself() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.send(sys.pid, {"note": 1})
        return await sys.recv(timeout=1)

    async with llmos.boot(FakeDriver()) as kernel:
        info = await kernel.spawn(main, name="narcissus")
        got = result(await kernel.wait(info.pid))
    assert (got.sender, got.payload) == (info.pid, {"note": 1})


async def test_the_receiver_gets_a_copy() -> None:
    async def sender(sys, to):  # noqa: ANN001
        payload = {"items": [1, 2], "meta": {"k": "v"}}
        await sys.send(to, payload)
        payload["items"].append(3)
        payload["meta"]["k"] = "changed"
        payload["new"] = True
        return payload

    async with llmos.boot(FakeDriver()) as kernel:
        r = await kernel.spawn(receiver)
        mutated = result(await spawn_and_wait(kernel, sender, r.pid))
        [got] = result(await kernel.wait(r.pid))
    assert mutated["items"] == [1, 2, 3]
    assert got.payload == {"items": [1, 2], "meta": {"k": "v"}}


async def test_payloads_are_json_values_after_the_trip() -> None:
    async def main(sys):  # noqa: ANN001
        await sys.send(sys.pid, {"tuple": (1, 2), "none": None, "float": 1.5, "nested": [{"a": True}]})
        return (await sys.recv(timeout=1)).payload

    async with llmos.boot(FakeDriver()) as kernel:
        got = result(await spawn_and_wait(kernel, main))
    assert got == {"tuple": [1, 2], "none": None, "float": 1.5, "nested": [{"a": True}]}


class Opaque:
    pass


def _circular() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


@pytest.mark.parametrize("payload", [Opaque(), {"f": print}, _circular()],
                         ids=["object", "function", "circular"])
async def test_a_payload_that_is_not_json_is_einval(payload: Any) -> None:
    async def main(sys):  # noqa: ANN001
        err = await caught(sys.send(sys.pid, payload))
        leftover = await caught(sys.recv(timeout=0.01))
        return err, leftover

    async with llmos.boot(FakeDriver()) as kernel:
        err, leftover = result(await spawn_and_wait(kernel, main))
    assert type(err) is InvalidRequest
    assert err.code is Errno.EINVAL
    assert "JSON" in err.message
    assert type(leftover) is Timeout  # nothing was delivered


async def test_a_full_mailbox_is_eagain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params, "MAILBOX_SIZE", 3)

    async def sender(sys, to):  # noqa: ANN001
        for i in range(3):
            await sys.send(to, i)
        return await caught(sys.send(to, "one too many"))

    async with llmos.boot(FakeDriver()) as kernel:
        sink = await kernel.spawn(idle)
        err = result(await spawn_and_wait(kernel, sender, sink.pid))
        kernel.kill(sink.pid)
    assert type(err) is MailboxFull
    assert err.code is Errno.EAGAIN
    assert "full" in err.message


async def test_a_drained_mailbox_takes_messages_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params, "MAILBOX_SIZE", 2)

    async def main(sys):  # noqa: ANN001
        await sys.send(sys.pid, 1)
        await sys.send(sys.pid, 2)
        full = await caught(sys.send(sys.pid, 3))
        first = await sys.recv(timeout=1)
        await sys.send(sys.pid, 3)
        rest = [await sys.recv(timeout=1), await sys.recv(timeout=1)]
        return full, [first.payload] + [m.payload for m in rest]

    async with llmos.boot(FakeDriver()) as kernel:
        full, got = result(await spawn_and_wait(kernel, main))
    assert type(full) is MailboxFull
    assert got == [1, 2, 3]


async def test_ipc_needs_its_capability() -> None:
    async def child(sys, to):  # noqa: ANN001
        return await caught(sys.send(to, 1)), await caught(sys.recv(timeout=0.01))

    async def parent(sys, to):  # noqa: ANN001
        kid = await sys.spawn(child, to, caps=["model.generate"])
        return (await sys.wait(kid.pid)).result

    async with llmos.boot(FakeDriver()) as kernel:
        sink = await kernel.spawn(receiver, 1, 0.2)
        send_err, recv_err = result(await spawn_and_wait(kernel, parent, sink.pid, caps=DEFAULT_APP_CAPS))
        unreceived = await kernel.wait(sink.pid)
    for err, call in ((send_err, "send"), (recv_err, "recv")):
        assert type(err) is PermissionDenied
        assert err.code is Errno.EPERM
        assert f"'{call}' needs capability 'ipc'" in err.message
    assert unreceived.state is ProcState.FAILED and "Timeout" in unreceived.reason


@pytest.mark.parametrize("to", [1.5, None, ["a"]])
async def test_send_to_something_that_is_neither_pid_nor_name_is_einval(to: Any) -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.send(to, 1))

    async with llmos.boot(FakeDriver()) as kernel:
        err = result(await spawn_and_wait(kernel, main))
    assert type(err) is InvalidRequest
    assert "bad arguments to 'send'" in err.message


async def test_kernel_send_checks_the_payload_and_the_target() -> None:
    async with llmos.boot(FakeDriver()) as kernel:
        with pytest.raises(NoSuchProcess):
            kernel.send(777, "x")
        r = await kernel.spawn(receiver)
        with pytest.raises(InvalidRequest):
            kernel.send(r.pid, Opaque())
        kernel.send(r.pid, "ok")
        [got] = result(await kernel.wait(r.pid))
    assert got.payload == "ok"
