"""Stop strings, streaming holdback and incremental decoding (drivers/text.py)."""

from __future__ import annotations

import pytest

from llmos.drivers.text import IncrementalDecoder, advance, cut_at_stop
from llmos.kernel.model import GenerationJob, SamplingParams

REPLIES = [
    "Paris is the capital of France.",
    "  Two  spaces,\n\ttabs and\nnew lines ... then: (parentheses) & 'quotes' don't \"break\".",
    "Café, naïve, Zürich, 日本語のテキスト, emoji 🙂🚀 and math ∑ x² ≤ ∞.",
    "def add(a, b):\n    return a + b  # code keeps its indentation\n",
]


@pytest.mark.model
@pytest.mark.parametrize("reply", REPLIES)
def test_incremental_decoding_equals_decoding_the_whole_reply(smollm2, reply):
    tokenizer = smollm2.driver.tokenizer
    tokens = tokenizer.encode(reply, add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer)
    seen = []
    for n in range(1, len(tokens) + 1):
        text = decoder.update(tokens[:n], final=n == len(tokens))
        assert "\ufffd" not in text  # a half character waits for the token that completes it
        assert text.startswith(seen[-1] if seen else "")  # only ever appended to
        seen.append(text)
    assert seen[-1] == tokenizer.decode(tokens, skip_special_tokens=True)


@pytest.mark.model
def test_a_reply_cut_inside_a_character_keeps_the_partial_character(smollm2):
    tokenizer = smollm2.driver.tokenizer
    tokens = tokenizer.encode("🙂", add_special_tokens=False)
    assert len(tokens) > 1  # the emoji's bytes span several tokens
    decoder = IncrementalDecoder(tokenizer)
    assert decoder.update(tokens[:1]) == ""
    assert decoder.update(tokens[:1], final=True) == tokenizer.decode(tokens[:1])


def _job(*stops: str) -> GenerationJob:
    return GenerationJob(id=1, pid=1, sampling=SamplingParams(stop=list(stops)))


def test_cut_at_the_earliest_stop_string():
    assert cut_at_stop("a END b STOP", ("STOP", "END")) == ("a ", True)
    assert cut_at_stop("nothing here", ("STOP",)) == ("nothing here", False)


def test_a_possible_start_of_a_stop_string_is_held_back_until_it_is_decided():
    job = _job("STOP")
    assert advance(job, "hello ST", 0, final=False) == ("hello ", False)
    assert advance(job, "hello STAR", 6, final=False) == ("STAR", False)  # not a stop after all
    assert advance(job, "hello STAR STOP and more", 10, final=False) == (" ", True)
    assert job.text == "hello STAR "
