"""The chromadb store, run against both backends: embedded (PersistentClient in a folder)
and a real `chroma run` server on loopback (HttpClient)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from llmos.drivers.embeddings import MINILM
from llmos.kernel.errors import InvalidRequest, MemoryUnavailable, StoreLocked
from llmos.memory.store import ChromaStore, collection_name, open_store
from llmos.testing import chroma_server

_names = itertools.count()


@pytest.fixture(scope="module", params=["embedded", "server"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaStore]:
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "embedded":
        opened = open_store(folder, MINILM)
        yield opened
        anyio.run(opened.aclose)
    else:
        with chroma_server(folder) as url:
            opened = open_store(url, MINILM)
            yield opened
            anyio.run(opened.aclose)


@pytest.fixture
def ns() -> str:
    return f"test ns/{next(_names)}"  # a fresh namespace per test; spaces and slashes are allowed


FACTS = ["The user's dog is called Rex.", "The meeting moved to Thursday at 3 pm.", "Paris is the capital of France.",
         "The wifi password is hunter2.", "Bananas are rich in potassium."]


async def test_query_finds_the_closest_meaning_first(store: ChromaStore, ns: str) -> None:
    await store.add(ns, FACTS, [{"n": i} for i in range(len(FACTS))], [f"f{i}" for i in range(len(FACTS))])
    found = await store.query(ns, "what is my dog's name?", k=3)
    assert [item.id for item in found][0] == "f0"
    assert found[0].text == FACTS[0] and found[0].namespace == ns and found[0].metadata == {"n": 0}
    scores = [item.score for item in found]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


async def test_where_filters_by_metadata(store: ChromaStore, ns: str) -> None:
    await store.add(ns, FACTS, [{"n": i, "even": i % 2 == 0} for i in range(len(FACTS))],
                    [f"f{i}" for i in range(len(FACTS))])
    found = await store.query(ns, "my dog", k=5, where={"even": False})
    assert {item.id for item in found} == {"f1", "f3"}
    found = await store.query(ns, "anything", k=5, where={"n": {"$gte": 3}})
    assert {item.id for item in found} == {"f3", "f4"}


async def test_a_bad_where_filter_is_einval(store: ChromaStore, ns: str) -> None:
    await store.add(ns, FACTS[:1], [{"n": 0}], ["f0"])
    with pytest.raises(InvalidRequest, match="where"):
        await store.query(ns, "x", k=1, where={"n": {"$bogus": 1}})


async def test_k_larger_than_the_namespace_and_an_empty_namespace(store: ChromaStore, ns: str) -> None:
    assert await store.query(ns, "anything", k=3) == []
    await store.add(ns, FACTS[:2], [{"n": 0}, {"n": 1}], ["a", "b"])
    assert len(await store.query(ns, "anything", k=50)) == 2


async def test_namespaces_are_isolated(store: ChromaStore, ns: str) -> None:
    await store.add(ns, ["secret of a"], [{"n": 1}], ["x"])
    other = ns + "-other"
    await store.add(other, ["secret of b"], [{"n": 2}], ["x"])  # the same id in another namespace
    assert [i.text for i in await store.query(ns, "secret", k=5)] == ["secret of a"]
    assert [i.text for i in await store.query(other, "secret", k=5)] == ["secret of b"]
    assert await store.count(ns) == await store.count(other) == 1


async def test_add_overwrites_by_id_get_and_delete(store: ChromaStore, ns: str) -> None:
    await store.add(ns, ["first"], [{"v": 1}], ["id1"])
    await store.add(ns, ["second"], [{"v": 2}], ["id1"])
    [item] = await store.get(ns, ["id1", "missing"])
    assert (item.text, item.metadata, item.score) == ("second", {"v": 2}, None)
    await store.delete(ns, ["id1"])
    assert await store.get(ns, ["id1"]) == []
    assert await store.count(ns) == 0


async def test_many_items_in_one_add_are_batched(store: ChromaStore, ns: str) -> None:
    texts = [f"note {i}: the box number {i} holds {i * 7} marbles" for i in range(300)]
    await store.add(ns, texts, [{"i": i} for i in range(300)], [str(i) for i in range(300)])
    assert await store.count(ns) == 300
    [best] = await store.query(ns, "how many marbles are in box number 123?", k=1)
    assert best.id == "123"


def test_collection_names_are_valid_and_distinct() -> None:
    names = {collection_name(ns) for ns in ("a", "A", "a b", "a/b", "ünïcode", "x" * 300, "")}
    assert len(names) == 7
    for name in names:
        assert 3 <= len(name) <= 512 and name[0].isalnum() and name[-1].isalnum()


async def test_a_second_writer_on_a_folder_gets_a_clear_error(tmp_path: Path) -> None:
    first = ChromaStore.open_folder(tmp_path, MINILM)
    try:
        with pytest.raises(StoreLocked) as caught:
            ChromaStore.open_folder(tmp_path, MINILM)
        assert str(tmp_path) in caught.value.message and "another llmos process" in caught.value.message
        assert caught.value.code.name == "EBUSY" and isinstance(caught.value, MemoryUnavailable)
    finally:
        await first.aclose()
    second = ChromaStore.open_folder(tmp_path, MINILM)  # released on close
    await second.aclose()


async def test_a_second_writer_in_another_process_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from llmos.memory.store import ChromaStore\n"
            "from llmos.drivers.embeddings import MINILM\n"
            "try:\n    ChromaStore.open_folder(__import__('pathlib').Path(sys.argv[1]), MINILM)\n"
            "except Exception as e:\n    print(type(e).__name__)\n")
    first = ChromaStore.open_folder(tmp_path, MINILM)
    try:
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    finally:
        await first.aclose()
    assert out.stdout.strip() == "StoreLocked", out.stderr


def test_an_unreachable_server_is_enodev() -> None:
    with pytest.raises(MemoryUnavailable, match="cannot reach the chroma server"):
        open_store("http://127.0.0.1:9", MINILM)  # the discard port: nothing listens
    with pytest.raises(InvalidRequest):
        ChromaStore.open_server("ftp://x", MINILM)
