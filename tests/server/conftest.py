"""Fixtures for the daemon's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos.testing import llmos_server


@pytest.fixture(scope="session")
def smollm2_server(session_llmos_home: Path) -> Iterator[str]:
    """A real `llmos serve --model smollm2` in its own OS process on a free loopback port,
    shared by the session (its home is the session's); yields its URL."""
    with llmos_server("--model", "smollm2", env={"LLMOS_HOME": str(session_llmos_home)}) as url:
        yield url
