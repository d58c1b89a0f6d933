"""codegen: the code out of the model's fenced block."""

from __future__ import annotations

import pytest

from llmos.apps.seed.codegen import extract_code
from llmos.testing import FakeDriver, ScriptedConsole, result, run_app


@pytest.mark.parametrize(("text", "code"), [
    ("```python\ndef f():\n    return 1\n```\nThis function...", "def f():\n    return 1"),
    ("Sure:\n```\nx = 1\n```", "x = 1"),
    ("```py\nprint('unclosed')", "print('unclosed')"),
    ("no fence at all", "no fence at all"),
])
def test_extract_code(text, code):
    assert extract_code(text) == code


async def test_codegen_prints_only_the_code():
    driver, console = FakeDriver(), ScriptedConsole()
    driver.enqueue("```python\ndef add(a, b):\n    return a + b")  # the stop string ended it before the fence
    out = result(await run_app("codegen", "add two numbers", driver=driver, console=console))
    assert out == "def add(a, b):\n    return a + b"
    assert console.text == out + "\n"
    assert driver.prompts[0].startswith("<system>You are a coding assistant. Answer with a single ```python")
    assert driver.jobs[0].sampling.stop == ("\n```",)


@pytest.mark.model
async def test_codegen_on_the_real_model_gives_python_that_compiles(smollm2):
    code = result(await run_app("codegen", "a function is_even(n) that returns whether n is even",
                                driver=smollm2.driver, max_tokens=60, timeout=60))
    assert "def " in code and "```" not in code
    compile(code, "<codegen>", "exec")
