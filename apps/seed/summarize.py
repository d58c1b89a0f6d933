"""summarize: a summary of text of any length, map-reduce style.

Short text is summarized in one call. Long text is cut into chunks at paragraph and
sentence boundaries; one child process summarizes each chunk (the engine batches them
together), and the chunk summaries are summarized in turn until one remains. A chunk the
model's window cannot hold (ContextOverflow) is halved and tried again.
"""

from __future__ import annotations

import re
from pathlib import Path

from llmos.apps.seed.output import show
from llmos.syscalls import ContextOverflow, InvalidRequest, Sys

CHUNK_CHARS = 2000  # ~500 tokens of English: small models summarize short passages best
SUMMARY_TOKENS = 96  # reply budget of each summary
MIN_SPLIT_CHARS = 200  # text this short that still overflows the window is an error, not split further
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def instruction(text: str) -> str:
    return f"Summarize this text in one or two sentences:\n\n{text}"


def chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Consecutive pieces of at most `size` characters, cut between paragraphs, then
    sentences, then words (a single word longer than `size` is cut as is)."""
    pieces: list[str] = []
    for unit in _units(text, size):
        if pieces and len(pieces[-1]) + 1 + len(unit) <= size:
            pieces[-1] += "\n" + unit
        else:
            pieces.append(unit)
    return pieces


def _units(text: str, size: int) -> list[str]:
    units: list[str] = []
    for paragraph in filter(None, (p.strip() for p in text.split("\n\n"))):
        if len(paragraph) <= size:
            units.append(paragraph)
            continue
        for sentence in _SENTENCE_END.split(paragraph):
            units += [sentence] if len(sentence) <= size else _cut_words(sentence, size)
    return units


def _cut_words(text: str, size: int) -> list[str]:
    words, out = text.split(" "), [""]
    for word in words:
        while len(word) > size:
            out.append(word[:size])
            word = word[size:]
        if len(out[-1]) + len(word) + 1 > size:
            out.append("")
        out[-1] = f"{out[-1]} {word}".strip()
    return [o for o in out if o]


async def summarize_chunk(sys: Sys, text: str, max_tokens: int = SUMMARY_TOKENS) -> str:
    """One summary of text that should fit the window; halves it on ContextOverflow."""
    try:
        reply = await sys.chat(messages=[{"role": "user", "content": instruction(text)}], max_tokens=max_tokens)
        return reply.text.strip()
    except ContextOverflow:
        if len(text) < MIN_SPLIT_CHARS:
            raise
        half = len(text) // 2
        return " ".join([await summarize_chunk(sys, part, max_tokens) for part in (text[:half], text[half:])])


async def summarize_chunks(sys: Sys, parts: list[str], max_tokens: int) -> list[str]:
    """Map: one child process per chunk, all at once, so their generation is batched."""
    children = [await sys.spawn(summarize_chunk, part, max_tokens, name=f"summarize-{i + 1}")
                for i, part in enumerate(parts)]
    summaries = []
    for child in children:
        status = await sys.wait(child.pid)
        if not status.ok:
            raise RuntimeError(f"summarizing chunk {child.name} {status.state.name}: {status.reason}")
        summaries.append(status.result)
    return summaries


async def main(sys: Sys, text: str = "", file: str | None = None, chunk_chars: int = CHUNK_CHARS,
               max_tokens: int = SUMMARY_TOKENS) -> str:
    """Summarize `text` (or the contents of `file`), streaming the final summary."""
    text = _read(file) if file else text
    if not text.strip():
        raise InvalidRequest("nothing to summarize: give the text, or --file PATH")
    chunk_chars, max_tokens = int(chunk_chars), int(max_tokens)
    parts = chunks(text, chunk_chars)
    while True:
        while len(parts) > 1:  # reduce until one chunk holds all that is left
            summaries = await summarize_chunks(sys, parts, max_tokens)
            shorter = chunks("\n\n".join(summaries), chunk_chars)
            parts = shorter if len(shorter) < len(parts) else ["\n\n".join(summaries)]  # it stopped shrinking
        try:
            return await show(sys, await sys.chat(messages=[{"role": "user", "content": instruction(parts[0])}],
                                                  max_tokens=max_tokens, stream=True))
        except ContextOverflow:
            if len(parts[0]) < MIN_SPLIT_CHARS:
                raise
            half = len(parts[0]) // 2
            parts = [parts[0][:half], parts[0][half:]]


def _read(file: str) -> str:
    path = Path(file).expanduser()
    if not path.is_file():
        raise InvalidRequest(f"cannot summarize {file!r}: no such file")
    return path.read_text(errors="replace")
