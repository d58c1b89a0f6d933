"""Turning decoded text into what a job keeps and streams: stop strings and holdback.

Shared by every driver so that stop strings and streaming behave the same everywhere.
Invariant: the text streamed so far is always a prefix of the job's final text.
"""

from __future__ import annotations

from typing import Any

from llmos.kernel.model import GenerationJob


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the earliest stop string (excluded), and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters to keep back: a possible start of a stop string.
    (An incomplete multi-byte character never reaches here: IncrementalDecoder keeps it.)"""
    keep = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:k]):
                keep = k
                break
    return keep


def advance(job: GenerationJob, decoded: str, streamed: int, final: bool) -> tuple[str, bool]:
    """Update `job.text` from the full decoded reply so far.

    Returns the new piece to stream (the caller adds its length to `streamed`) and
    whether a stop string ended the reply.
    """
    text, stopped = cut_at_stop(decoded, job.sampling.stop)
    job.text = text
    safe = len(text) if (stopped or final) else len(text) - _holdback(text, job.sampling.stop)
    return text[streamed:safe] if safe > streamed else "", stopped


class IncrementalDecoder:
    """The text of a growing reply, decoding only its newest tokens at each step.

    Decoding the whole reply every step costs O(length) per token, O(length²) per reply.
    Here `tokens[prefix:read]` is the stretch already turned into text, kept as context so
    the tokenizer joins the new tokens to it as it would in a full decode (spaces, merges);
    only what the new tokens add is appended. A trailing incomplete multi-byte character
    (decoded as U+FFFD) waits for the token that completes it, unless the reply is final.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.text = ""
        self._prefix = self._read = 0

    def update(self, tokens: list[int], final: bool = False) -> str:
        """The reply's text once `tokens` (the whole reply so far) are decoded."""
        context = self._decode(tokens[self._prefix:self._read])
        window = self._decode(tokens[self._prefix:])
        if len(window) > len(context) and (final or not window.endswith("\ufffd")):
            self.text += window[len(context):]
            self._prefix, self._read = self._read, len(tokens)
        return self.text

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True) if tokens else ""
