"""Fixtures shared across the suite. The real model is loaded once per session."""

from __future__ import annotations

import pytest

import llmos


@pytest.fixture(scope="session")
def smollm2() -> llmos.Model:
    """The real default model (SmolLM2-135M-Instruct), from the LLMOS_HOME cache."""
    return llmos.load_model("smollm2")
