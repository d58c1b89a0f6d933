"""Fixtures shared across the suite. The real model is loaded once per session."""

from __future__ import annotations

import pytest

import llmos


@pytest.fixture(scope="session")
def smollm2() -> llmos.Model:
    """The real default model (SmolLM2-135M-Instruct), from the LLMOS_HOME cache."""
    return llmos.load_model("smollm2")


@pytest.fixture(scope="session")
def smollm2_f32() -> llmos.Model:
    """The same model in float32, whatever the machine's default dtype: the precision in
    which the engine's greedy outputs equal `model.generate`'s exactly."""
    return llmos.load_model("smollm2", dtype="float32")
