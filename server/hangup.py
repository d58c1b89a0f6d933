"""A request whose client hangs up stops its work, as a local caller's cancel would."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client hung up before the answer was ready; nobody reads a reply now."""


async def unless_hung_up(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """`await work()`, cancelled if the client disconnects first (ClientGone then)."""
    done: list[Any] = []
    error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_on_hang_up, request, tg.cancel_scope)
        try:
            done.append(await work())
        except Exception as exc:  # raised below, unwrapped (a task group would group it)
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error
    if not done:
        raise ClientGone()
    return done[0]


async def cancel_on_hang_up(request: Request, scope: anyio.CancelScope) -> None:
    """Cancel `scope` when the client of `request` (whose body was read) disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass  # the body was read already: the next message is the hang-up
    scope.cancel()
