"""Memory: embedding throughput, remember/recall latency, and recall quality.

- embed: texts per second, batched against one text at a time, in the same run.
- remember and recall through the syscalls (embedding included) with the store holding
  1,000 and 10,000 items (filled beforehand with batched adds).
- recall@5: 1,000 facts archived, each queried by a paraphrase that shares few words with
  it; a hit is the fact among the 5 best.

Targets (issue 4): recall@5 >= 0.9; recall p50 under 50 ms at 10,000 items.

    .venv/bin/python bench/memory.py [--sizes 1000 10000] [--queries 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import anyio

import llmos
from llmos.drivers.embeddings import MINILM, embed
from llmos.memory.store import open_store
from llmos.syscalls import Sys

RESULTS = Path(__file__).parent / "results" / "memory.json"
NAMESPACE = "bench"

FIRST = ["Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
         "Marco", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tamara", "Umar", "Vera", "Wim", "Xenia",
         "Yusuf"]
LAST = ["Moreau", "Okafor"]
# (fact, paraphrased question, values): the question shares the person's name and little else.
ATTRIBUTES = [
    ("{p}'s favourite colour is {v}.", "Which colour does {p} like most?", ["teal", "crimson", "ochre", "violet"]),
    ("{p} was born in the city of {v}.", "What is {p}'s home town?", ["Porto", "Leeds", "Kyoto", "Graz"]),
    ("{p} works as a {v}.", "What does {p} do for a living?", ["nurse", "welder", "pilot", "baker"]),
    ("{p} drives a {v} car.", "What kind of vehicle does {p} own?", ["green", "rusty", "tiny", "electric"]),
    ("{p} is allergic to {v}.", "Which food makes {p} ill?", ["peanuts", "shellfish", "gluten", "eggs"]),
    ("{p} plays the {v} in a band.", "Which instrument does {p} perform on?", ["cello", "drums", "oboe", "banjo"]),
    ("{p}'s dog is named {v}.", "What is the name of {p}'s pet?", ["Rex", "Biscuit", "Luna", "Pepper"]),
    ("{p} speaks fluent {v}.", "Which foreign language has {p} mastered?", ["Finnish", "Swahili", "Korean", "Greek"]),
    ("{p} supports the {v} football club.", "Which team is {p} a fan of?", ["Ajax", "Celtic", "Benfica", "Lazio"]),
    ("{p} has lived in {v} flats.", "How many apartments has {p} rented?", ["three", "seven", "two", "nine"]),
    ("{p}'s birthday falls in {v}.", "In which month was {p} born?", ["March", "July", "October", "May"]),
    ("{p} studied {v} at university.", "What was {p}'s degree subject?", ["geology", "law", "music", "physics"]),
    ("{p} is afraid of {v}.", "What frightens {p}?", ["spiders", "heights", "thunder", "clowns"]),
    ("{p} collects old {v}.", "What does {p} keep a collection of?", ["stamps", "coins", "maps", "radios"]),
    ("{p} goes {v} every weekend.", "Which hobby fills {p}'s Saturdays?", ["climbing", "sailing", "fishing", "hiking"]),
    ("{p} drinks {v} each morning.", "What is {p}'s breakfast beverage?", ["green tea", "espresso", "cocoa", "kefir"]),
    ("{p}'s phone number ends in {v}.", "What are the last digits of {p}'s mobile?", ["4417", "0932", "7781", "5520"]),
    ("{p} is reading a novel by {v}.", "Which author's book is {p} busy with?", ["Tolstoy", "Austen", "Murakami", "Woolf"]),
    ("{p} parks the bike at the {v}.", "Where does {p} leave the bicycle?", ["station", "library", "gym", "harbour"]),
    ("{p} has a tattoo of a {v}.", "What image is inked on {p}'s skin?", ["whale", "rose", "compass", "dragon"]),
]


def facts(seed: int = 7) -> list[tuple[str, str]]:
    """1,000 (fact, paraphrased query) pairs: 50 people x 20 attributes."""
    rng = random.Random(seed)
    people = [f"{first} {last}" for last in LAST for first in FIRST]
    return [(fact.format(p=p, v=rng.choice(values)), question.format(p=p))
            for p in people for fact, question, values in ATTRIBUTES]


def filler(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    words = "the a of box stone river quiet green seven market letter window morning paper old city train".split()
    return [f"note {i}: " + " ".join(rng.choice(words) for _ in range(12)) for i in range(n)]


def ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"p50_ms": round(statistics.median(values) * 1e3, 2),
            "p95_ms": round(values[int(len(values) * 0.95) - 1] * 1e3, 2)}


def bench_embed(n: int) -> dict[str, float]:
    texts = [q for _, q in facts()][:n]
    embed(texts[:8])  # load the model
    started = time.perf_counter()
    embed(texts)
    batched = n / (time.perf_counter() - started)
    single_n = max(16, n // 8)
    started = time.perf_counter()
    for text in texts[:single_n]:
        embed([text])
    single = single_n / (time.perf_counter() - started)
    return {"texts": n, "batched_per_s": round(batched, 1), "one_by_one_per_s": round(single, 1),
            "speedup": round(batched / single, 2)}


async def fill(folder: Path, texts: list[str], start: int) -> None:
    store = await anyio.to_thread.run_sync(open_store, folder, MINILM)
    try:
        for i in range(0, len(texts), 1000):
            part = texts[i:i + 1000]
            await store.add(NAMESPACE, part, [{"kind": "note", "i": start + i + j} for j in range(len(part))],
                            [f"f{start + i + j}" for j in range(len(part))])
    finally:
        await store.aclose()


async def syscall_latency(folder: Path, queries: list[str]) -> dict[str, dict[str, float]]:
    async def app(sys: Sys) -> tuple[list[float], list[float]]:
        await sys.recall("warm up", k=5)
        recalls, remembers = [], []
        for q in queries:
            started = time.perf_counter()
            await sys.recall(q, k=5)
            recalls.append(time.perf_counter() - started)
        for q in queries:
            started = time.perf_counter()
            item = await sys.remember(q + " (noted)")
            remembers.append(time.perf_counter() - started)
            await sys.forget(item)  # keep the size as measured
        return recalls, remembers

    async with llmos.boot(None, memory=folder) as kernel:
        info = await kernel.spawn(app, name=NAMESPACE)
        status = await kernel.wait(info.pid)
    assert status.ok, status.reason
    recalls, remembers = status.result
    return {"recall": ms(recalls), "remember": ms(remembers)}


async def recall_at_5(folder: Path, pairs: list[tuple[str, str]]) -> float:
    store = await anyio.to_thread.run_sync(open_store, folder, MINILM)
    try:
        ns = "recall-at-5"
        await store.add(ns, [f for f, _ in pairs], [{"i": i} for i in range(len(pairs))],
                        [f"r{i}" for i in range(len(pairs))])
        hits = 0
        for i, (_, query) in enumerate(pairs):
            found = await store.query(ns, query, k=5)
            hits += f"r{i}" in [item.id for item in found]
    finally:
        await store.aclose()
    return hits / len(pairs)


async def main(sizes: list[int], queries: int) -> dict:
    pairs = facts()
    report: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                                "load_avg_1m": round(os.getloadavg()[0], 2)}}
    report["embed"] = await anyio.to_thread.run_sync(bench_embed, 256)
    e = report["embed"]
    print(f"embed: batched {e['batched_per_s']} texts/s, one by one {e['one_by_one_per_s']} texts/s "
          f"(x{e['speedup']})")
    with tempfile.TemporaryDirectory() as tmp:
        folder, have, texts = Path(tmp), 0, filler(max(sizes))
        report["latency"] = {}
        for size in sorted(sizes):
            started = time.perf_counter()
            await fill(folder, texts[have:size], have)
            fill_rate = (size - have) / (time.perf_counter() - started)
            have = size
            lat = await syscall_latency(folder, [q for _, q in pairs[:queries]])
            lat["fill_items_per_s"] = round(fill_rate, 1)
            report["latency"][str(size)] = lat
            print(f"{size:>6} items: recall p50 {lat['recall']['p50_ms']} ms (p95 {lat['recall']['p95_ms']}), "
                  f"remember p50 {lat['remember']['p50_ms']} ms (p95 {lat['remember']['p95_ms']}); "
                  f"filled at {lat['fill_items_per_s']} items/s")
    with tempfile.TemporaryDirectory() as tmp:
        report["recall_at_5"] = round(await recall_at_5(Path(tmp), pairs), 3)
    big = report["latency"][str(max(sizes))]["recall"]["p50_ms"]
    report["targets"] = {"recall_at_5>=0.9": report["recall_at_5"] >= 0.9, "recall_p50_ms<50_at_largest": big < 50}
    print(f"recall@5 over {len(pairs)} paraphrased facts: {report['recall_at_5']} (target >= 0.9)")
    print(f"recall p50 at {max(sizes)} items: {big} ms (target < 50 ms): x{round(50 / big, 2)} under the target")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    result = anyio.run(main, args.sizes, args.queries)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {RESULTS}")
