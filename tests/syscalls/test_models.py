"""The model-library syscalls (`sys.models.*`): what they change in the kernel's LLMOS_HOME,
what they need (`models.admin` for every change, nothing to look), their typed errors, the
audit log, and "loaded" as the kernel has it."""

from __future__ import annotations

from pathlib import Path

import pytest

import llmos
from llmos import library
from llmos.syscalls import InvalidRequest, ModelCard, ModelRow, NoSuchModel, PermissionDenied
from llmos.testing import FakeDriver, caught, library_folder, result, spawn_and_wait

ADMIN = {"models.admin"}



@pytest.fixture
async def kernel():
    async with llmos.boot(FakeDriver(name="smollm2"), memory=None, mcp_servers=None, embedder=None,
                          durable=None) as kernel:
        yield kernel


def row(rows: list[ModelRow], name: str) -> ModelRow:
    return next(r for r in rows if r.name == name)


async def test_import_create_show_copy_default_remove_through_syscalls(kernel, llmos_home, tmp_path):
    folder = library_folder(tmp_path / "Mine", 4096)

    async def main(sys):
        name = await sys.models.import_path(str(folder))
        await sys.models.create("pirate", name, system="Talk like a pirate.", params={"temperature": 0})
        await sys.models.cp("pirate", "pirate2")
        now = await sys.models.set_default("pirate2")
        listed = await sys.models.list()
        card = await sys.models.show("pirate")
        removed = await sys.models.rm("pirate2")
        return name, now, listed, card, removed, await sys.models.default()

    name, now, listed, card, removed, default = result(await spawn_and_wait(kernel, main, caps=ADMIN))
    assert name == "mine" and now == "pirate2"
    assert row(listed, "mine").context_length == "4096" and row(listed, "pirate2").default
    assert isinstance(card, ModelCard) and card.system == "Talk like a pirate." and card.params == {"temperature": 0}
    assert removed == "removed pirate2" and default == "smollm2"  # removing the default clears it
    assert set(library.read_library(llmos_home).models) == {"mine", "pirate"}  # the kernel's LLMOS_HOME


async def test_loaded_is_what_the_kernel_has(kernel):
    async def main(sys):
        return await sys.models.list()

    listed = result(await spawn_and_wait(kernel, main))
    assert row(listed, "smollm2").loaded == "yes"
    assert all(r.loaded == "no" for r in listed if r.name != "smollm2")


async def test_changes_need_models_admin_and_looking_needs_nothing(kernel, llmos_home):
    async def main(sys):
        looked = [await sys.models.list(), await sys.models.show("smollm2"), await sys.models.default()]
        return looked, [await caught(call) for call in (
            sys.models.create("mine", "smollm2"), sys.models.set_default("smollm2"), sys.models.rm("smollm2"),
            sys.models.add("far", "http://127.0.0.1:9/v1"), sys.models.pull("smollm2"),
            sys.models.import_path("/tmp"), sys.models.cp("smollm2", "two"))]

    looked, refused = result(await spawn_and_wait(kernel, main, caps=set()))
    assert looked[2] == "smollm2"
    assert all(isinstance(e, PermissionDenied) and "models.admin" in str(e) for e in refused)
    assert library.read_library(llmos_home).models == {}


async def test_mistakes_are_typed_errors_naming_the_problem(kernel, tmp_path):
    async def main(sys):
        return [await caught(call) for call in (
            sys.models.show("nope"), sys.models.create("mine", "nope"), sys.models.pull("nope"),
            sys.models.create("bad name", "smollm2"), sys.models.import_path(str(tmp_path)),
            sys.models.import_path("bad\x00path"), sys.models.create("hot", "smollm2", params={"temperature": -1}),
            sys.models.rm("smollm2"), sys.models.add("far", "ftp://somewhere"))]

    errors = result(await spawn_and_wait(kernel, main, caps=ADMIN))
    assert [type(e) for e in errors[:3]] == [NoSuchModel] * 3
    assert all(isinstance(e, InvalidRequest) for e in errors[3:]), errors
    assert "'nope'" in str(errors[0]) and "not a model name" in str(errors[3])
    assert "built-in model" in str(errors[7]) and "temperature" in str(errors[6])


async def test_changes_are_audited(kernel, llmos_home):
    async def main(sys):
        await sys.models.create("mine", "smollm2")
        await sys.models.list()

    result(await spawn_and_wait(kernel, main, caps=ADMIN, name="librarian"))
    entries = list(llmos.read_audit(llmos_home / "audit.log"))
    calls = [e.call for e in entries if e.process == "librarian"]
    assert "models.create" in calls and "models.list" not in calls


async def test_a_kernel_without_a_library_says_so():
    from llmos.kernel.kernel import Kernel
    from llmos.syscalls import TABLE, Errno, Sys

    async with Kernel(TABLE, Sys) as bare:
        async def main(sys):
            return await caught(sys.models.list())

        error = result(await spawn_and_wait(bare, main))
    assert error.code is Errno.ENODEV and "no model library" in str(error)
