"""Memory syscalls: remember, recall, forget; namespaces and their capabilities; persistence
across kernels; the writer lock; a kernel without a store. The store is real (a temporary
folder); no model is needed."""

from __future__ import annotations

from pathlib import Path

import pytest

import llmos
from llmos.syscalls import (
    DEFAULT_APP_CAPS,
    Errno,
    InvalidRequest,
    MemoryItem,
    MemoryUnavailable,
    NoSuchMemory,
    PermissionDenied,
    StoreLocked,
)
from llmos.testing import caught, result, spawn_and_wait


async def run(tmp_path: Path, app, *args, memory="store", **options):  # noqa: ANN001
    store = tmp_path / memory if isinstance(memory, str) else memory
    async with llmos.boot(None, memory=store) as kernel:
        return result(await spawn_and_wait(kernel, app, *args, timeout=60, **options))


async def test_remember_recall_forget(tmp_path: Path) -> None:
    async def main(sys):  # noqa: ANN001
        ids = [await sys.remember(text, {"topic": topic}) for text, topic in (
            ("The user's sister lives in Lisbon.", "family"), ("The user prefers tea to coffee.", "food"),
            ("The project deadline is March 3rd.", "work"))]
        found = await sys.recall("Where does my sister live?", k=2)
        filtered = await sys.recall("anything", k=5, where={"topic": "work"})
        await sys.forget(ids[0])
        after = await sys.recall("Where does my sister live?", k=3)
        again = await caught(sys.forget(ids[0]))
        return ids, found, filtered, after, again

    ids, found, filtered, after, again = await run(tmp_path, main, name="agent")
    assert len(set(ids)) == 3
    assert isinstance(found[0], MemoryItem) and found[0].id == ids[0] and found[0].namespace == "agent"
    assert found[0].text == "The user's sister lives in Lisbon." and found[0].score > found[1].score
    assert found[0].metadata["topic"] == "family" and found[0].metadata["kind"] == "note"
    assert [i.id for i in filtered] == [ids[2]]
    assert ids[0] not in [i.id for i in after]
    assert type(again) is NoSuchMemory and again.code is Errno.ENOENT


async def test_memories_persist_across_kernels(tmp_path: Path) -> None:
    async def write(sys):  # noqa: ANN001
        return await sys.remember("The spare key is under the blue flowerpot.")

    async def read(sys):  # noqa: ANN001
        return await sys.recall("where is the spare key?", k=1)

    item_id = await run(tmp_path, write, name="keeper")
    [found] = await run(tmp_path, read, name="keeper")  # a new kernel on the same folder, same agent name
    assert found.id == item_id and "flowerpot" in found.text
    assert await run(tmp_path, read, name="stranger") == []  # another agent's namespace is empty


async def test_another_namespace_needs_a_capability(tmp_path: Path) -> None:
    async def owner(sys):  # noqa: ANN001
        return await sys.remember("alice's private note")

    async def snoop(sys, item_id):  # noqa: ANN001
        return (await caught(sys.recall("note", namespace="alice")),
                await caught(sys.remember("planted", namespace="alice")),
                await caught(sys.forget(item_id, namespace="alice")))

    async def reader(sys):  # noqa: ANN001
        found = await sys.recall("note", namespace="alice")
        return found, await caught(sys.remember("planted", namespace="alice"))

    store = tmp_path / "store"
    async with llmos.boot(None, memory=store) as kernel:
        item_id = result(await spawn_and_wait(kernel, owner, name="alice"))
        errors = result(await spawn_and_wait(kernel, snoop, item_id, name="mallory", caps=DEFAULT_APP_CAPS))
        found, write_err = result(await spawn_and_wait(kernel, reader, name="bob",
                                                       caps=DEFAULT_APP_CAPS | {"memory.read.alice"}))
        star = result(await spawn_and_wait(kernel, reader, name="carol", caps=DEFAULT_APP_CAPS | {"memory.read.*"}))
    for err in errors:
        assert type(err) is PermissionDenied and err.code is Errno.EPERM and ".alice'" in err.message
    assert "'memory.read.alice'" in errors[0].message and "'memory.write.alice'" in errors[1].message
    assert [i.text for i in found] == ["alice's private note"] and found[0].namespace == "alice"
    assert type(write_err) is PermissionDenied
    assert [i.text for i in star[0]] == ["alice's private note"]


async def test_memory_calls_need_the_memory_capability(tmp_path: Path) -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.remember("x")), await caught(sys.recall("x"))

    errors = await run(tmp_path, main, caps={"ipc"})
    assert all(type(e) is PermissionDenied and "'memory'" in e.message for e in errors)
    assert "memory" in DEFAULT_APP_CAPS


@pytest.mark.parametrize(("call", "args"), [
    ("remember", {"text": ""}),
    ("remember", {"text": "x", "metadata": {"nested": {"a": 1}}}),
    ("recall", {"query": "x", "k": 0}),
    ("recall", {"query": "x", "k": 1000}),
    ("recall", {"query": ""}),
    ("forget", {"id": ""}),
    ("recall", {"query": "x", "namespace": ""}),
])
async def test_bad_memory_arguments_are_einval(tmp_path: Path, call: str, args: dict) -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.syscall({"call": call, **args}))

    err = await run(tmp_path, main)
    assert type(err) is InvalidRequest


async def test_a_bad_where_filter_is_einval(tmp_path: Path) -> None:
    async def main(sys):  # noqa: ANN001
        await sys.remember("x")
        return await caught(sys.recall("x", where={"a": {"$nope": 1}}))

    assert type(await run(tmp_path, main)) is InvalidRequest


async def test_a_kernel_without_a_store_is_enodev(tmp_path: Path) -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.remember("x")), await caught(sys.recall("x"))

    async with llmos.boot(None, memory=None) as kernel:
        errors = result(await spawn_and_wait(kernel, main))
    assert all(type(e) is MemoryUnavailable and e.code is Errno.ENODEV for e in errors)


async def test_a_second_kernel_on_the_same_folder_gets_ebusy_and_goes_on(tmp_path: Path) -> None:
    async def main(sys):  # noqa: ANN001
        return await caught(sys.remember("x"))

    async with llmos.boot(None, memory=tmp_path) as first:
        assert isinstance(result(await spawn_and_wait(first, main)), tuple)  # it opened the store
        async with llmos.boot(None, memory=tmp_path) as second:
            err = result(await spawn_and_wait(second, main))
    assert type(err) is StoreLocked and err.code is Errno.EBUSY and "in use by another llmos process" in err.message


async def test_the_embedded_default_lives_under_llmos_home(llmos_home: Path) -> None:

    async def main(sys):  # noqa: ANN001
        return await sys.remember("hello")

    async with llmos.boot(None) as kernel:
        result(await spawn_and_wait(kernel, main))
    assert (llmos_home / "memory" / "chroma.sqlite3").exists()
