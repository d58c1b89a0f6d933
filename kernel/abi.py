"""The shape every syscall request has. The concrete requests live in llmos.syscalls."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Request(BaseModel):
    """A syscall request: a frozen message a process hands the kernel and awaits.

    Subclasses set `call` (the name used in traces and in dict form), `capability`
    (what the caller must hold, or None) and `blocking` (whether the caller may wait
    on it, which shows the process as BLOCKED meanwhile).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    call: ClassVar[str] = ""
    capability: ClassVar[str | None] = None
    blocking: ClassVar[bool] = False
