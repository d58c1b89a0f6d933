"""The outbox: a generation's text pieces to its one reader, and the moment it ends."""

from __future__ import annotations

import anyio
import anyio.lowlevel

from llmos.kernel.outbox import Outbox


async def _settle() -> None:
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


async def test_the_reader_gets_every_piece_in_order_then_stops_at_the_end() -> None:
    outbox = Outbox()
    got: list[str] = []

    async def read() -> None:
        async for piece in outbox.pieces():
            got.append(piece)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(read)
        await _settle()
        assert outbox.reader_waits and outbox.unread == 0
        assert outbox.put("one ") and outbox.put("two ")  # handed before the reader's turn
        assert not outbox.reader_waits and outbox.unread == 2
        await _settle()
        assert got == ["one ", "two "] and outbox.reader_waits
        assert outbox.put("three")
        outbox.end()
    assert got == ["one ", "two ", "three"] and outbox.done.is_set()


async def test_what_came_before_the_reader_began_is_read_and_an_ended_outbox_stops_at_once() -> None:
    outbox = Outbox()
    outbox.put("all ")
    outbox.put("at once")
    outbox.end()
    assert not outbox.reader_waits  # nobody has begun to read
    assert [piece async for piece in outbox.pieces()] == ["all ", "at once"]


async def test_a_reader_that_leaves_drops_what_is_held_and_refuses_what_comes() -> None:
    outbox = Outbox()
    outbox.put("read ")
    outbox.put("never read")
    pieces = outbox.pieces()
    assert await anext(pieces) == "read "
    await pieces.aclose()  # the reader breaks out of its loop: it leaves
    assert outbox.unread == 0 and not outbox.put("too late")


async def test_a_reader_cancelled_while_it_waits_leaves() -> None:
    outbox = Outbox()

    async def read() -> None:
        async for _ in outbox.pieces():
            pass

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(read)
        await _settle()
        assert outbox.reader_waits
        tasks.cancel_scope.cancel()
    assert not outbox.reader_waits and not outbox.put("to nobody")

