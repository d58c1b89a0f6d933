"""What the workflow tests share."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def supervisor_script(prompt: str) -> str:
    """FakeDriver's answers for the supervisor examples: the router picks the poet for a
    haiku, else math; math hands a haiku off to the poet."""
    if "which one should do this task" in prompt:
        return "poet" if "haiku" in prompt.split("<user>")[1].splitlines()[0] else "math"
    if prompt.startswith("<system>calc"):
        return "HANDOFF: poet" if "haiku" in prompt else "36"
    return "rain falls"


@pytest.fixture
def script() -> Callable[[str], str]:
    return supervisor_script
