"""The seed documents' first example, and the model library's errors."""

from __future__ import annotations

import pytest

import llmos


@pytest.mark.model
def test_seed_example_generates_text(smollm2):
    model = llmos.load_model("smollm2")  # the seed example, as written (cached: about a second)
    text = model.generate_text("The world is full of ")
    assert isinstance(text, str) and len(text.split()) >= 3


@pytest.mark.model
def test_default_model_is_smollm2():
    assert llmos.load_model().name == "smollm2"


@pytest.mark.model
def test_chat_answers_a_question(smollm2):
    assert "Paris" in smollm2.chat("What is the capital of France?", max_tokens=20)


def test_unknown_model_lists_the_names_that_exist():
    with pytest.raises(llmos.UnknownModel) as err:
        llmos.load_model("gpt-3")
    assert "gpt-3" in str(err.value) and "smollm2" in str(err.value)


def test_aliases_resolve():
    from llmos import plugins
    from llmos.drivers import find_model

    plugins.load()  # the built-in models join the library through the plugin hooks
    assert find_model("SmolLM2-135M-Instruct").name == "smollm2"
    assert "smollm2" in llmos.model_names()
