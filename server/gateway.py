"""The daemon's foothold in the kernel.

The daemon is a process (`llmosd`, every capability, like a Unix daemon started by init):
each action the HTTP API takes is a syscall of it, checked and traced. Work done for a
client (a chat completion, a remote app) runs as a child process of it, with the
capabilities that client's request needs, so it shows in `ps`, is batched with the rest
and can be killed like any process. A client that goes away kills its request's process.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from llmos.syscalls import ExitStatus, ProcState, Sys, SyscallError
from llmos.syscalls.errors import Errno

T = TypeVar("T")
DAEMON_NAME = "llmosd"


class RequestEnded(SyscallError):
    """The process serving an HTTP request ended without an answer (killed from `ps`, or its
    deadline passed). Clients are told not to retry it."""

    code = Errno.EINTR


@dataclass
class Failure:
    """An error carried as a value across a channel (to be raised on the other side)."""

    error: BaseException


class Gateway:
    """Runs the HTTP API's work as processes; `sys` is the daemon process's own handle."""

    def __init__(self, sys: Sys, model: str | None) -> None:
        self.sys = sys
        self.model = model  # the name the kernel's driver goes by, None without one

    @classmethod
    async def start(cls, kernel: Any) -> Gateway:
        """Spawn the daemon process on a booted kernel and return its gateway."""
        handle: list[Sys] = []
        ready = anyio.Event()

        async def llmosd(sys: Sys) -> None:
            handle.append(sys)
            ready.set()
            await anyio.sleep_forever()

        info = await kernel.spawn(llmosd, name=DAEMON_NAME)
        kernel.protected.add(info.pid)  # no client may kill, suspend or renice the daemon's process
        await ready.wait()
        return cls(handle[0], None if kernel.driver is None else kernel.driver.name)

    async def call(self, name: str, work: Callable[[Sys], Awaitable[T]], caps: Iterable[str]) -> T:
        """Run `work(sys)` as a child process named `name` and return what it returns; its
        syscall errors are raised here. Cancelled (the client left): the process is killed."""
        outcome: list[Any] = []

        async def main(sys: Sys) -> None:
            try:
                outcome.append(await work(sys))
            except SyscallError as exc:
                outcome.append(Failure(exc))

        info = await self.sys.spawn(main, name=name, caps=frozenset(caps))
        status = await self._wait(info.pid)
        if not outcome:
            raise _ended(status)
        if isinstance(outcome[0], Failure):
            raise outcome[0].error
        return outcome[0]

    async def stream(self, name: str, produce: Callable[[Sys], AsyncIterator[T]],
                     caps: Iterable[str]) -> AsyncIterator[T]:
        """Run `produce(sys)` as a child process and yield its items as they come. A syscall
        error before the first item is raised by this call (so the HTTP answer can still be
        an error status); after it, by the iteration. Closing the iterator kills the process."""
        send, receive = anyio.create_memory_object_stream[Any](math.inf)

        async def main(sys: Sys) -> None:
            async with send:
                try:
                    async for item in produce(sys):
                        await send.send(item)
                except SyscallError as exc:
                    await send.send(Failure(exc))

        info = await self.sys.spawn(main, name=name, caps=frozenset(caps))
        try:
            first = await receive.receive()
        except anyio.EndOfStream:
            await receive.aclose()
            raise _ended(await self._wait(info.pid)) from None
        except BaseException:
            await self._kill(info.pid)
            raise
        if isinstance(first, Failure):
            await receive.aclose()
            await self._wait(info.pid)
            raise first.error
        return self._rest(info.pid, first, receive)

    async def _rest(self, pid: int, first: Any, receive: MemoryObjectReceiveStream[Any]) -> AsyncIterator[Any]:
        reaped = False
        try:
            yield first
            async with receive:
                async for item in receive:
                    if isinstance(item, Failure):
                        raise item.error
                    yield item
            status = await self._wait(pid)
            reaped = True
            if status.state is not ProcState.EXITED:
                raise _ended(status)
        finally:
            if not reaped:  # the client left, or the process failed mid-stream
                await self._kill(pid)

    async def _wait(self, pid: int) -> ExitStatus:
        try:
            return await self.sys.wait(pid)
        except BaseException:
            await self._kill(pid)
            raise

    async def _kill(self, pid: int) -> None:
        """Kill the process (the client went away) and reap it, whatever cancels the caller."""
        with anyio.CancelScope(shield=True):
            try:
                await self.sys.kill(pid, "the HTTP client went away")
                await self.sys.wait(pid, timeout=5)
            except SyscallError:  # reaped already, or it would not die in time
                pass


class RequestFailed(SyscallError):
    """The process serving an HTTP request failed on an error that is not a syscall's: a bug
    (HTTP 500)."""

    code = Errno.EIO
    http_status = 500


def _ended(status: ExitStatus) -> SyscallError:
    if status.state is ProcState.FAILED:
        return RequestFailed(f"process {status.pid} ({status.name}) failed: {status.reason}")
    return RequestEnded(f"process {status.pid} ({status.name}) was {status.state.name.lower()}: {status.reason}")
