"""Durable processes on DBOS Transact: their record, their resumption after a kernel dies,
their supervision, and the kernels that share one durable database.

`Durable` is what llmos.boot plugs in as `kernel.durability`. DBOS (and its import, most
of a second) starts only when needed: at boot if LLMOS_HOME (or the cluster's database)
has durable processes to resume, else at the first durable spawn or question.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from llmos.home import DATABASE_ENV, durable_sqlite
from llmos.kernel import params
from llmos.kernel.durable import DurableInfo, DurableSpec
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import ExitStatus, Process, ProcessInfo

if TYPE_CHECKING:
    from llmos.durable.runtime import DbosDurability

log = logging.getLogger("llmos.durable")
def database_url_from_env() -> str | None:
    return os.environ.get(DATABASE_ENV) or None


class Durable:
    """kernel/durable.py's `Durability` for one kernel, started on first use."""

    def __init__(self, kernel: Kernel, home: Path, url: str | None = None, *, resume: bool = True,
                 capacity: int = params.DURABLE_CAPACITY, api_url: str | None = None) -> None:
        self.kernel = kernel
        self.home = home
        self.url = url  # PostgreSQL (a cluster), or None: SQLite in LLMOS_HOME/durable
        self.resume_at_start = resume
        self.capacity = capacity  # in a cluster: durable processes each kernel runs at once (one number for all)
        self.api_url = api_url  # in a cluster: where this kernel's API answers, for `ps --durable`
        self._runtime: DbosDurability | None = None
        self._lock = anyio.Lock()

    @property
    def has_work(self) -> bool:
        """Whether there may be durable processes to resume (a cluster, or a home that has used them)."""
        return self.url is not None or durable_sqlite(self.home).exists()

    @property
    def started(self) -> bool:
        return self._runtime is not None

    @property
    def resumed(self) -> list[str]:
        return [] if self._runtime is None else list(self._runtime.resumed)

    async def runtime(self) -> DbosDurability:
        async with self._lock:
            if self._runtime is None:  # a failed start is tried again at the next use
                from llmos.durable import engine
                from llmos.durable.runtime import DbosDurability

                runtime = DbosDurability(self.kernel, engine.database_url(self.home, self.url), self.api_url,
                                         capacity=None if self.url is None else self.capacity)
                await runtime.start(self.resume_at_start)
                self._runtime = runtime
            return self._runtime

    async def close(self) -> None:
        if self._runtime is not None:
            runtime, self._runtime = self._runtime, None
            with anyio.CancelScope(shield=True):
                await runtime.close()

    # -- kernel/durable.py's Durability, delegated ----------------------------------------------
    async def spawn(self, spec: DurableSpec, parent: Process | None) -> ProcessInfo:
        return await (await self.runtime()).spawn(spec, parent)

    async def wait(self, durable_id: str, timeout: float | None = None) -> ExitStatus:
        return await (await self.runtime()).wait(durable_id, timeout)

    async def list(self) -> list[DurableInfo]:
        return await (await self.runtime()).list()

    async def info(self, durable_id: str) -> DurableInfo:
        return await (await self.runtime()).info(durable_id)

    async def resume(self, durable_id: str) -> DurableInfo:
        return await (await self.runtime()).resume(durable_id)

    async def cancel(self, durable_id: str, reason: str = "cancelled") -> None:
        await (await self.runtime()).cancel(durable_id, reason)


__all__ = ["DATABASE_ENV", "Durable", "database_url_from_env"]
