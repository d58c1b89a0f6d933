"""Where llmos keeps its files: LLMOS_HOME, by default ~/.llmos."""

from __future__ import annotations

import os
from pathlib import Path


def llmos_home() -> Path:
    home = Path(os.environ.get("LLMOS_HOME") or Path.home() / ".llmos").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def audit_log(home: Path) -> Path:
    """The append-only log of refused and sensitive calls (llmos.kernel.audit)."""
    return home / "audit.log"


DATABASE_ENV = "LLMOS_DATABASE_URL"  # a cluster's durable database (PostgreSQL), shared by its kernels


def durable_sqlite(home: Path) -> Path:
    """Where a home's own durable processes are recorded (DBOS's SQLite database)."""
    return home / "durable" / "system.sqlite"


def has_durable_record(home: Path) -> bool:
    """Whether durable processes may exist: a cluster's database is named, or this home has used them."""
    return bool(os.environ.get(DATABASE_ENV)) or durable_sqlite(home).exists()
