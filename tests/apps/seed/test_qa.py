"""qa: passages chosen by lexical overlap, answered with their sources named."""

from __future__ import annotations

import pytest

import llmos
from llmos.apps.seed.qa import Passage, fingerprint, ingest, select
from llmos.syscalls import ProcState
from llmos.testing import FakeDriver, ScriptedConsole, result, run_app, spawn_and_wait


@pytest.fixture
def docs(tmp_path):
    (tmp_path / "pets.md").write_text("Our office cat is named Miso. Miso is orange and sleeps on the printer.")
    (tmp_path / "plants.md").write_text("The ficus in the lobby is watered every Monday.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rules.txt").write_text("Visitors sign in at the desk. The printer jams on Fridays.")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    return tmp_path


def test_ingest_reads_text_files_recursively(docs):
    assert sorted({p.source for p in ingest(str(docs))}) == ["pets.md", "plants.md", "sub/rules.txt"]


def test_select_prefers_rare_shared_words(docs):
    passages = ingest(str(docs))
    assert [p.source for p in select(passages, "What is the name of the office cat?", k=2)] == ["pets.md"]
    assert select(passages, "When is the ficus watered?", k=1)[0].source == "plants.md"
    assert select([Passage("a", "nothing shared")], "zebra?") == [Passage("a", "nothing shared")]


async def test_the_answer_names_its_sources(docs):
    driver, console = FakeDriver(), ScriptedConsole()
    driver.enqueue("The cat is Miso.")
    out = result(await run_app("qa", "What is the office cat called?", driver=driver, console=console,
                               docs=str(docs)))
    assert out == "The cat is Miso.\n\nSources: pets.md"
    assert "[1] pets.md: Our office cat is named Miso." in driver.prompts[0]
    assert console.text == out + "\n"


async def test_a_missing_folder_is_a_clear_failure(tmp_path):
    status = await run_app("qa", "why?", docs=str(tmp_path / "nope"))
    assert status.state is ProcState.FAILED and "is not a folder" in status.reason


@pytest.mark.model
async def test_qa_on_the_real_model(docs, smollm2, tmp_path_factory):
    out = result(await run_app("qa", "What is the office cat's name?", driver=smollm2.driver, docs=str(docs),
                               memory=tmp_path_factory.mktemp("store"), max_tokens=24, timeout=120))
    assert "Miso" in out and out.endswith("Sources: pets.md")


async def test_with_a_memory_store_passages_are_remembered_once_and_recalled(docs, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    driver = FakeDriver()
    for _ in range(2):
        driver.enqueue("Miso.")
        out = result(await run_app("qa", "What is the office cat called?", driver=driver, docs=str(docs),
                                   memory=store, timeout=120))
        assert out.startswith("Miso.\n\nSources: pets.md")
    assert "[1] pets.md: Our office cat is named Miso." in driver.prompts[-1]

    async def count(sys):  # noqa: ANN001
        return len(await sys.recall("anything", k=50))

    index = f"qa-{fingerprint(ingest(str(docs)))}"
    async with llmos.boot(FakeDriver(), memory=store) as kernel:
        assert result(await spawn_and_wait(kernel, count, name=index, timeout=60)) == 3  # not 6
