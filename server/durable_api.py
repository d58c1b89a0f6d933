"""The durable-process API: list the durable processes of the daemon's LLMOS_HOME (or
cluster), wait for one, resume or cancel one. A durable process is started like any other
(`POST /v1/processes` with `"durable": true`); it is named here by its durable id, which
outlives the daemon (pids do not).

Each route is a `durable.*` syscall of llmosd, checked and traced as any other.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from llmos.server import wire
from llmos.server.procs_api import procs_state
from llmos.syscalls.durable import DURABLE_ID_PATTERN

router = APIRouter(prefix="/v1/durable")
DurableIdPath = Path(min_length=1, max_length=64, pattern=DURABLE_ID_PATTERN)


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="cancelled", max_length=1000)


@router.get("")
async def list_durable(request: Request) -> dict[str, Any]:
    """Every durable process, newest first: state, where it runs, how far it got."""
    infos = await procs_state(request).sys.durable.ps()
    return {"object": "list", "data": [info.model_dump(mode="json") for info in infos]}


@router.get("/{durable_id}")
async def get_durable(request: Request, durable_id: str = DurableIdPath) -> dict[str, Any]:
    return (await procs_state(request).sys.durable.info(durable_id)).model_dump(mode="json")


@router.post("/{durable_id}/wait")
async def wait_durable(request: Request, durable_id: str = DurableIdPath,
                       timeout: float | None = Query(None, ge=0)) -> dict[str, Any]:
    """Wait (at most `timeout` s: then 504) for it to end, wherever it runs; its ExitStatus."""
    return wire.exit_status(await procs_state(request).sys.durable.wait(durable_id, timeout))


@router.post("/{durable_id}/resume")
async def resume_durable(request: Request, durable_id: str = DurableIdPath) -> dict[str, Any]:
    """Run an unfinished (or cancelled) one again from its record."""
    return (await procs_state(request).sys.durable.resume(durable_id)).model_dump(mode="json")


@router.post("/{durable_id}/cancel")
async def cancel_durable(request: Request, body: CancelBody | None = None,
                         durable_id: str = DurableIdPath) -> dict[str, Any]:
    """Stop it for good, wherever it runs."""
    state = procs_state(request)
    await state.sys.durable.cancel(durable_id, (body or CancelBody()).reason)
    return (await state.sys.durable.info(durable_id)).model_dump(mode="json")
