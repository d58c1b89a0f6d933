"""DBOS Transact, as llmos runs it: one instance per Python process, its database in
LLMOS_HOME (SQLite) or a cluster's PostgreSQL, its logging quiet, and every call that is
not a durable process's own step made outside any workflow's context.

DBOS keeps the "current workflow" in a context variable, which tasks inherit: an ordinary
process spawned by a durable one inherits it too. A DBOS call made there would be recorded
as a step of the durable process and shift its record; `isolated` runs such calls in an
empty context instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import sqlalchemy as sa
from dbos import DBOS
from dbos._error import DBOSAwaitedWorkflowCancelledError, DBOSUnexpectedStepError, DBOSWorkflowCancelledError

from llmos.home import durable_sqlite
from llmos.kernel.errors import DurabilityUnavailable, DurableCancelled, ReplayDiverged
from llmos.urls import redacted

T = TypeVar("T")
log = logging.getLogger("llmos.durable")
# Workflows started by one llmos version resume under another: a change in an app's code
# is caught step by step (ReplayDiverged), not by refusing every old workflow.
APP_VERSION = "llmos-1"
_owner: object | None = None  # who launched DBOS in this Python process


def database_url(home: Path, url: str | None) -> str:
    """The DBOS system database: `url` (postgresql://..., a cluster's) or SQLite in LLMOS_HOME/durable."""
    if url:
        return url
    path = durable_sqlite(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


QUEUE = "llmos-processes"  # a cluster's durable runs wait here for a kernel with room
QUEUE_POLL_S = 0.5


async def launch(owner: object, url: str, executor_id: str, capacity: int | None = None,
                 worker: bool = True) -> None:
    """Start DBOS for `owner` (one kernel). With a `capacity` (a cluster), the runs of
    durable processes go through a queue: each kernel runs at most `capacity` of them at once
    (one number for the cluster, DBOS keeps it in the database: the kernel started last sets
    it). A kernel that is not a `worker` (one that only lists or cancels) takes none.

    It runs on the kernel's event loop, blocking it while DBOS migrates its database (a
    tenth of a second on SQLite): DBOS adopts the loop it is launched from, and the
    workflows it starts by itself (resumed, dequeued) must run on the kernel's loop, where
    the processes they host live. Launched from a worker thread, DBOS would run them on a
    loop of its own."""
    global _owner
    if _owner is not None:
        raise DurabilityUnavailable("another kernel in this Python process already runs durable processes; "
                                    "boot this one with durable=None")
    _quiet()
    config: dict[str, Any] = {"name": "llmos", "system_database_url": url, "application_version": APP_VERSION,
                              "executor_id": executor_id, "log_level": "WARNING", "run_admin_server": False,
                              "notification_listener_polling_interval_sec": 0.2}
    if url.startswith("sqlite"):
        config["system_database_engine"] = sqlite_engine(url)
    _owner = owner
    try:
        DBOS(config=config)  # type: ignore[arg-type]
        if not worker:
            DBOS.listen_queues([])
        DBOS.launch()
        if capacity is not None and worker:
            await DBOS.register_queue_async(QUEUE, worker_concurrency=capacity, polling_interval_sec=QUEUE_POLL_S,
                                            on_conflict="always_update")
    except BaseException as exc:
        await anyio.to_thread.run_sync(destroy, owner)
        if isinstance(exc, Exception):
            raise unusable(url, exc) from exc
        raise


def unusable(url: str, exc: Exception) -> DurabilityUnavailable:
    return DurabilityUnavailable(f"the durable database {redacted(url)} cannot be used: {type(exc).__name__}: {exc}")


def sqlite_engine(url: str) -> sa.Engine:
    """The embedded database's engine: DBOS's own settings (IMMEDIATE transactions, a long
    busy timeout, foreign keys) plus write-ahead logging with synchronous=NORMAL. A commit
    then reaches the OS without an fsync of its own: it survives the kernel's process dying
    (kill -9, the case durability is for) but not necessarily the machine losing power,
    and a recorded syscall costs a fraction of a millisecond instead of several."""
    engine = sa.create_engine(url, connect_args={"check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def configure(connection: Any, record: Any) -> None:
        connection.isolation_level = None  # autocommit while the pragmas run
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=30000")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.isolation_level = "IMMEDIATE"

    return engine


def destroy(owner: object) -> None:
    global _owner
    if _owner is owner:
        DBOS.destroy()
        _owner = None


def current() -> Any:
    """The runtime (llmos.durable.runtime.DbosDurability) that launched DBOS in this process."""
    if _owner is None:
        raise DurabilityUnavailable("no kernel in this Python process runs durable processes")
    return _owner


async def isolated(call: Callable[[], Awaitable[T]]) -> T:
    """`call()` outside any workflow's context (see the module's docstring). A database
    that fails is a DurabilityUnavailable (ENODEV), not a driver's exception."""
    task = asyncio.get_running_loop().create_task(_awaited(call), context=contextvars.Context())
    try:
        return await task
    except sa.exc.SQLAlchemyError as exc:
        raise DurabilityUnavailable(f"the durable database failed: {type(exc).__name__}: {exc}") from exc


async def _awaited(call: Callable[[], Awaitable[T]]) -> T:
    return await call()


class DbosSteps:
    """A durable process's record as DBOS keeps it: one step per syscall, named after the
    call, in the workflow that hosts the process (kernel/journal.py's StepEngine)."""

    def __init__(self, durable_id: str) -> None:
        self.durable_id = durable_id

    async def step(self, name: str, body: Callable[[str], Awaitable[Any]]) -> Any:
        async def run() -> Any:
            return await body(f"{DBOS.workflow_id}:{DBOS.step_id}")

        try:
            return await DBOS.run_step_async({"name": name}, run)
        except DBOSUnexpectedStepError as exc:
            _, step, expected, recorded = exc.inputs
            raise ReplayDiverged(f"durable process {self.durable_id} diverged from its record at syscall #{step}: "
                                 f"the record has {recorded!r}, the app now asks {expected!r}") from None
        except DBOSWorkflowCancelledError:  # cancelled from another kernel, or here
            raise DurableCancelled(f"durable process {self.durable_id} was cancelled") from None


class _Expected(logging.Filter):
    """What DBOS reports that is, for llmos, the expected course of things: a workflow's
    task cancelled (a kernel shutting down with durable processes unfinished, which is what
    they are for), and a cancelled durable process's workflows seeing that they were. (That
    a workflow is no longer owned by this kernel is filtered only for workflows llmos
    cancelled: otherwise it means this kernel was taken for dead while it ran.)"""

    EXPECTED = ("Asyncio task cancelled",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (DBOSAwaitedWorkflowCancelledError,
                                                               DBOSWorkflowCancelledError)):
            return False
        message = record.getMessage()
        if "no longer owned" in message and any(f"Workflow {wid} " in message for wid in CANCELLED):
            return False
        return not any(text in message for text in self.EXPECTED)


CANCELLED: set[str] = set()  # workflow ids this process cancelled on purpose (see _Expected)


def _quiet() -> None:
    logger = logging.getLogger("dbos")
    if not any(isinstance(f, _Expected) for f in logger.filters):
        logger.addFilter(_Expected())
