"""What crosses the wire between the daemon and its clients: syscalls and their results as
JSON, and server-sent events. Shared by both sides, so it imports no web framework.

A syscall travels in its dict form, {"call": name, **fields} (the form the dispatcher
validates with the request class), and its result as the JSON of the request class's
result type (`Request.result_type()`), which the client validates back into that type. A
streamed generation (`TextStream`) is an event stream instead: {"text": piece}..., then
{"reply": Reply}. Values that JSON cannot carry (a Python callable as `spawn`'s app) are
refused before they are sent, with an InvalidRequest naming the field.
"""

from __future__ import annotations

import ipaddress

import functools
import json
import types
import typing
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pydantic_core
from pydantic import TypeAdapter

from llmos.syscalls import TABLE, ExitStatus, InvalidRequest, Request, TextStream

SESSION_HEADER = "X-LLMOS-Session"  # the remote session's token, on every call of the session
SSE_MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def jsonable(value: Any) -> Any:
    """`value` as JSON data; what JSON cannot carry becomes its repr."""
    return pydantic_core.to_jsonable_python(value, fallback=repr)


def exit_status(status: ExitStatus) -> dict[str, Any]:
    """An ExitStatus as JSON; a result JSON cannot carry is given as its repr."""
    return status.model_dump(mode="json", fallback=repr)


# -- syscalls -----------------------------------------------------------------------------------
def request_body(request: Request[Any] | Mapping[str, Any]) -> dict[str, Any]:
    """The dict form of a syscall, ready for JSON. InvalidRequest naming the field when a
    value cannot cross to another process (a Python callable, an open file...)."""
    if isinstance(request, Request):
        call = request.call
        fields = {name: getattr(request, name) for name in request.model_fields_set}
    elif isinstance(request, Mapping):
        call, fields = request.get("call"), {k: v for k, v in request.items() if k != "call"}
    else:
        raise InvalidRequest(f"a syscall is a request object or a dict with a 'call' key, not {type(request).__name__}")
    check_body({"call": call, **fields})
    return {"call": call, **{name: _field_json(call, name, value) for name, value in fields.items()}}


def check_body(body: Mapping[str, Any]) -> None:
    """What cannot cross to another process although JSON could carry something there: an
    app object as `spawn`'s app (the remote kernel would have to import it: send a
    reference). Checked by the client before sending and by the server on receipt."""
    if body.get("call") == "spawn" and "app" in body and not isinstance(body["app"], str):
        raise InvalidRequest("spawn: the field 'app' must be a reference string ('module:attr' or 'file.py:attr') "
                             f"to cross to a remote kernel, not {_kind(body['app'])}")


def _kind(value: Any) -> str:
    return f"the Python object {value!r}" if callable(value) else f"{type(value).__name__} {value!r}"


def _field_json(call: Any, name: str, value: Any) -> Any:
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError as exc:
        raise InvalidRequest(f"{call}: the field {name!r} cannot cross to a remote kernel (it is not JSON data): "
                             f"{exc}") from None


def call_name(body: Mapping[str, Any]) -> str:
    name = body.get("call")
    return name if isinstance(name, str) else ""


@functools.cache
def _adapter(call: str) -> TypeAdapter[Any]:
    cls = TABLE.by_name.get(call)
    return TypeAdapter(Any if cls is None else _without_streams(cls.result_type()))


def _without_streams(annotation: Any) -> Any:
    """`Reply | TextStream` -> `Reply`: a stream is sent as events, never as a value."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kept = tuple(arg for arg in typing.get_args(annotation) if arg is not TextStream)
        return functools.reduce(lambda a, b: a | b, kept)
    return annotation


def encode_result(call: str, value: Any) -> Any:
    """A syscall's result as JSON data, by its request class's result type."""
    return _adapter(call).dump_python(value, mode="json", fallback=repr)


def decode_result(call: str, data: Any) -> Any:
    """A syscall's result back from JSON data, as its request class's result type."""
    return _adapter(call).validate_python(data)


# -- server-sent events ----------------------------------------------------------------------------
def sse(event: Mapping[str, Any] | None) -> bytes:
    """One event, as `data: JSON` and a blank line; None is a keep-alive comment."""
    if event is None:
        return b": keep-alive\n\n"
    return b"data: " + json.dumps(event).encode() + b"\n\n"


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The events of an SSE body, from its lines (comments and non-data fields skipped)."""
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []
    if data:
        yield json.loads("\n".join(data))


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
