"""qa: answer a question from a folder of documents, naming the sources used.

Ingestion cuts every text file under the folder into passages and remembers them (the
memory syscalls) in a namespace named after their contents, so a folder is embedded once
and a changed folder gets a fresh index. The passages recalled closest in meaning to the
question go before the model with their file names, and the answer ends with those
sources. Without a memory store (a kernel booted without one, or a store another llmos
process holds), the passages sharing the most rare words with the question are used.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmos.apps.seed.summarize import chunks
from llmos.syscalls import InvalidRequest, MemoryUnavailable, Sys

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".toml", ".yaml", ".yml", ".json", ".csv", ".html"}
PASSAGE_CHARS = 600  # one passage: a few sentences, so several fit a small model's prompt
TOP_PASSAGES = 3
RELATIVE_SCORE = 0.5  # recalled passages under half the best one's similarity are left out: not sources
ANSWER_TOKENS = 96
MAX_FILE_BYTES = 2_000_000  # larger files are skipped: a QA folder holds documents, not data dumps
STOPWORDS = frozenset("""a an and are as at be by can do does for from has have how i in is it its of on or
that the their there this to was what when where which who why will with you your""".split())
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Passage:
    source: str  # the file, relative to the folder
    text: str


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def ingest(folder: str) -> list[Passage]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InvalidRequest(f"--docs {folder!r} is not a folder")
    passages = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        if path.stat().st_size <= MAX_FILE_BYTES:
            text = path.read_text(errors="replace")
            passages += [Passage(str(path.relative_to(root)), part) for part in chunks(text, PASSAGE_CHARS)]
    if not passages:
        raise InvalidRequest(f"no text documents ({', '.join(sorted(TEXT_SUFFIXES))}) under {folder!r}")
    return passages


def select(passages: list[Passage], question: str, k: int = TOP_PASSAGES) -> list[Passage]:
    """The `k` passages sharing the most question words, each weighted by its rarity (idf)."""
    asked = set(words(question))
    bags = [Counter(words(p.text)) for p in passages]
    idf = {w: math.log((1 + len(bags)) / (1 + sum(w in bag for bag in bags))) + 1 for w in asked}

    def score(i: int) -> float:
        return sum(idf[w] * (1 + math.log(bags[i][w])) for w in asked if bags[i][w])

    ranked = sorted(range(len(passages)), key=lambda i: (-score(i), i))
    return [passages[i] for i in ranked[:k] if score(i) > 0] or [passages[i] for i in ranked[:1]]


def fingerprint(passages: list[Passage]) -> str:
    digest = hashlib.sha256()
    for p in passages:
        digest.update(f"{p.source}\0{p.text}\0".encode())
    return digest.hexdigest()[:16]


async def index_and_recall(sys: Sys, passages: list[dict[str, str]], question: str,
                           k: int) -> list[dict[str, Any]] | None:
    """In this process's own namespace (named after the passages): remember them unless
    they already are, then recall the `k` closest to the question. None without memory."""
    try:
        if not await sys.recall("passage", k=1, where={"kind": "qa-passage"}):
            for p in passages:
                await sys.remember(p["text"], {"source": p["source"], "kind": "qa-passage"})
        items = await sys.recall(question, k=k, where={"kind": "qa-passage"})
    except MemoryUnavailable:
        return None
    best = max((item.score or 0.0 for item in items), default=0.0)
    return [{"source": item.metadata["source"], "text": item.text} for item in items
            if (item.score or 0.0) >= RELATIVE_SCORE * best]


async def recall(sys: Sys, passages: list[Passage], question: str, k: int = TOP_PASSAGES) -> list[Passage] | None:
    """The passages closest in meaning to `question`, through the memory syscalls (None
    when there is no memory store to use)."""
    child = await sys.spawn(index_and_recall, [asdict(p) for p in passages], question, k,
                            name=f"qa-{fingerprint(passages)}")
    status = await sys.wait(child.pid)
    if not status.ok:
        raise RuntimeError(f"indexing the documents {status.state.name}: {status.reason}")
    return None if status.result is None else [Passage(**p) for p in status.result]


def prompt(question: str, chosen: list[Passage]) -> str:
    sources = "\n".join(f"[{i + 1}] {p.source}: {p.text}" for i, p in enumerate(chosen))
    return f"Use the sources to answer the question.\n\nSources:\n{sources}\n\nQuestion: {question}"


async def main(sys: Sys, question: str, docs: str = ".", max_tokens: int = ANSWER_TOKENS) -> str:
    """Answer `question` from the documents under `docs`; the answer names its sources."""
    passages = ingest(docs)
    chosen = await recall(sys, passages, question) or select(passages, question)
    reply = await sys.chat(messages=[{"role": "user", "content": prompt(question, chosen)}], max_tokens=int(max_tokens))
    named = ", ".join(dict.fromkeys(p.source for p in chosen))
    answer = f"{reply.text.strip()}\n\nSources: {named}"
    await sys.write(answer + "\n")
    return answer
