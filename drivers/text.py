"""Turning decoded text into what a job keeps and streams: stop strings and holdback.

Shared by every driver so that stop strings and streaming behave the same everywhere.
Invariant: the text streamed so far is always a prefix of the job's final text.
"""

from __future__ import annotations

from llmos.kernel.model import GenerationJob


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the earliest stop string (excluded), and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters to keep back: a possible start of a stop string, or
    an incomplete multi-byte character (decoded as U+FFFD) that the next token may fix."""
    keep = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:k]):
                keep = k
                break
    while keep < len(text) and text[len(text) - 1 - keep] == "\ufffd":
        keep += 1
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
