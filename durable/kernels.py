"""Which kernels are alive: each kernel that runs durable processes has a row in the
durable database and beats (bumps a counter) every DURABLE_HEARTBEAT_S. A kernel on this
host is alive while its OS process is (checked at once: a crashed kernel's work resumes
at the next boot without waiting); one on another host is dead once its counter has not
moved for DURABLE_DEAD_AFTER_S, as seen by this kernel's own clock (clocks across
machines need not agree).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from llmos.kernel import params

_METADATA = sa.MetaData()
KERNELS = sa.Table(
    "llmos_kernels", _METADATA,
    sa.Column("executor_id", sa.String(128), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("os_pid", sa.Integer, nullable=False),
    sa.Column("os_started", sa.BigInteger, nullable=False),  # the OS process's start time (a reused pid differs)
    sa.Column("url", sa.String(512)),  # its HTTP API, if it serves one
    sa.Column("capacity", sa.Integer),  # durable processes it runs at once, if limited
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("beats", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True)
class KernelRow:
    executor_id: str
    host: str
    os_pid: int
    os_started: int
    url: str | None
    capacity: int | None
    started_at: float
    beats: int


def host_identity() -> str:
    """This machine and PID namespace: kernels that share it can check each other's OS
    process (two containers on one host with the same host name do not)."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(path) if path.endswith("/pid") else Path(path).read_text().strip())
        except OSError:
            parts.append("?")
    return " ".join(parts)


def sqlalchemy_url(url: str) -> str:
    """A postgresql:// URL names psycopg (3, which DBOS installs), as DBOS reads it; SQLAlchemy
    would reach for psycopg2."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.partition("://")[2]
    return url


def _os_started(pid: int) -> int | None:
    """The start time of OS process `pid` (clock ticks after boot), or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of stat(5), counted after the command's ")"
    except (OSError, IndexError, ValueError):
        return None


class Kernels:
    """The kernels table of one durable database, as one kernel (`executor_id`) sees it."""

    def __init__(self, url: str, executor_id: str) -> None:
        self.engine = sa.create_engine(sqlalchemy_url(url), pool_pre_ping=True)
        self.executor_id = executor_id
        self.host = host_identity()
        self._seen: dict[str, tuple[int, float]] = {}  # executor -> (beats, when they last moved, monotonic)

    def join(self, url: str | None = None, capacity: int | None = None) -> None:
        _METADATA.create_all(self.engine, checkfirst=True)
        row = {"executor_id": self.executor_id, "host": self.host, "os_pid": os.getpid(),
               "os_started": _os_started(os.getpid()) or 0, "url": url, "capacity": capacity,
               "started_at": time.time(), "beats": 0}
        with self.engine.begin() as db:
            db.execute(KERNELS.delete().where(KERNELS.c.executor_id == self.executor_id))
            db.execute(KERNELS.insert().values(**row))

    def beat(self) -> bool:
        """One heartbeat; False if this kernel's row is gone: the others took it for dead
        (it was silent too long) and have taken over its durable processes."""
        with self.engine.begin() as db:
            done = db.execute(KERNELS.update().where(KERNELS.c.executor_id == self.executor_id)
                              .values(beats=KERNELS.c.beats + 1))
            return done.rowcount > 0

    def leave(self) -> None:
        with self.engine.begin() as db:
            db.execute(KERNELS.delete().where(KERNELS.c.executor_id == self.executor_id))
        self.engine.dispose()

    def rows(self) -> list[KernelRow]:
        with self.engine.connect() as db:
            return [KernelRow(**row._mapping) for row in db.execute(sa.select(KERNELS))]

    def alive(self) -> dict[str, KernelRow]:
        """The kernels alive now, by executor id (this one included)."""
        now = time.monotonic()
        living = {}
        for row in self.rows():
            if self._is_alive(row, now):
                living[row.executor_id] = row
        return living

    def forget(self, executor_ids: list[str]) -> None:
        """Drop dead kernels' rows (their work has been taken over)."""
        if executor_ids:
            with self.engine.begin() as db:
                db.execute(KERNELS.delete().where(KERNELS.c.executor_id.in_(executor_ids)))

    def _is_alive(self, row: KernelRow, now: float) -> bool:
        if row.executor_id == self.executor_id:
            return True
        if row.host == self.host and row.os_started:  # same machine and PID namespace: ask the OS
            return _os_started(row.os_pid) == row.os_started
        beats, since = self._seen.get(row.executor_id, (-1, now))
        if row.beats != beats:
            self._seen[row.executor_id] = (row.beats, now)
            return True
        return now - since < params.DURABLE_DEAD_AFTER_S
