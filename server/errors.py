"""Errors over HTTP, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

A syscall error keeps its identity on the wire: `code` is its errno name ("E2BIG") and
`llmos_error` its class name, so a remote `Sys` raises the same class a local one would
(llmos.server.client.raise_for). OpenAI clients read `message`, `type` and the status.
"""

from __future__ import annotations

from typing import Any

from llmos.syscalls import errors as syscall_errors
from llmos.syscalls.errors import Errno, SyscallError

# HTTP status of each errno; anything else is a 500.
STATUS = {
    Errno.EINVAL: 400, Errno.E2BIG: 400, Errno.ENOTTY: 400, Errno.ENOTUNIQ: 400,
    Errno.EPERM: 403,
    Errno.ESRCH: 404, Errno.ENOENT: 404, Errno.ENOSYS: 404, Errno.ENODEV: 404,
    Errno.EEXIST: 409, Errno.EBUSY: 409, Errno.EPROTO: 409,
    Errno.EAGAIN: 429, Errno.EDQUOT: 429,
    Errno.ETIMEDOUT: 504, Errno.EINTR: 503, Errno.EIO: 502,
}
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 409: "conflict_error", 429: "rate_limit_error"}
RETRY_AFTER_S = 1  # what a 429 for a full queue or process table tells the client to wait


class APIError(Exception):
    """An HTTP error answer: status, message, and the OpenAI `param` / `code` it names."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 llmos_error: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.llmos_error, self.headers = llmos_error, headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": TYPES.get(self.status, "server_error"),
                                 "param": self.param, "code": self.code}
        if self.llmos_error:
            error["llmos_error"] = self.llmos_error
        return {"error": error}


def from_syscall(exc: SyscallError) -> APIError:
    status = getattr(exc, "http_status", None) or STATUS.get(exc.code, 500)
    code = "context_length_exceeded" if exc.code is Errno.E2BIG else exc.code.name
    headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.code is Errno.EAGAIN else None
    if exc.code is Errno.EINTR:  # it was killed on purpose: clients that retry 5xx (openai-python) must not
        headers = {"x-should-retry": "false"}
    return APIError(status, exc.message, code=code, llmos_error=type(exc).__name__, headers=headers)


def invalid(param: str | None, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key")


def model_not_found(name: str, known: list[str]) -> APIError:
    return APIError(404, f"the model {name!r} does not exist here; this server has: {', '.join(known)}",
                    param="model", code="model_not_found")


def syscall_error_class(name: str | None) -> type[SyscallError]:
    """The SyscallError subclass an error body names (SyscallError for an unknown name)."""
    cls = getattr(syscall_errors, name or "", None)
    return cls if isinstance(cls, type) and issubclass(cls, SyscallError) else SyscallError
