"""The daemon's HTTP application: routes, authentication, and errors in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from llmos.server import auth, choose_api, durable_api, errors, library_api, observe_api, openai_api, procs_api, remote, tokenize_api
from llmos.server.gateway import Gateway
from llmos.server.hangup import ClientGone
from llmos.server.openai_schema import Unsupported
from llmos.syscalls import SyscallError


def create_app(gateway: Gateway, *, models: list[openai_api.ServedModel], embedder: Any = None,
               api_key: str | None = None, listed: Callable[[], list[tuple[str, int | None]]] = lambda: [],
               loadable: Callable[[], list[tuple[str, int | None]]] = lambda: []) -> FastAPI:
    """Besides `models`, with their context lengths: `listed`, the ones /v1/models shows
    (variants of the kernel's model, other models loaded now); `loadable`, every other model
    a request may name (loaded on demand). Both are asked when needed."""
    app = FastAPI(title="llmos", summary="An operating system for language-model agents, over HTTP.",
                  dependencies=[Depends(auth.check)], docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api_key = api_key
    if api_key is None:  # loopback only, without a key: a page whose DNS name rebinds to 127.0.0.1 is refused
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(auth.LOOPBACK_NAMES))
    app.state.gateway = gateway
    app.state.openai = openai_api.OpenAIState(gateway=gateway, models=models, embedder=embedder,
                                                 listed=listed, loadable=loadable)
    app.include_router(openai_api.router)
    app.include_router(choose_api.router)  # an llmos extension: the choose syscall
    app.include_router(tokenize_api.router)  # token counts for remote kernels (llmos.drivers.remote)
    app.include_router(observe_api.router)
    app.include_router(procs_api.router)
    app.include_router(durable_api.router)
    app.include_router(library_api.router)
    app.include_router(remote.router)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"service": "llmos", "model": gateway.model, "daemon_pid": gateway.sys.pid}

    _error_handlers(app)
    return app


def _answer(error: errors.APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return _answer(errors.APIError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:  # logged by uvicorn as well
        return _answer(errors.APIError(500, f"internal error: {type(exc).__name__}: {exc}"))

    @app.exception_handler(errors.APIError)
    async def api_error(request: Request, exc: errors.APIError) -> JSONResponse:
        return _answer(exc)

    @app.exception_handler(SyscallError)
    async def syscall_error(request: Request, exc: SyscallError) -> JSONResponse:
        return _answer(errors.from_syscall(exc))

    @app.exception_handler(Unsupported)
    async def unsupported(request: Request, exc: Unsupported) -> JSONResponse:
        return _answer(errors.invalid(exc.param, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if tuple(first.get("loc", ())) in (("body",), ("body", 0)) or first.get("type") == "json_invalid":
            return _answer(errors.invalid(None, "the body must be a JSON object (Content-Type: application/json)"))
        param = _param(first.get("loc", ()))
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return _answer(errors.invalid(param, message))


def _param(loc: Any) -> str | None:
    """("body", "messages", 0, "role") -> "messages[0].role"."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not text:
            text = str(part)
        elif part.startswith(("str", "list[", "dict[", "function-")) or part in ("ContentPart", "NamedToolChoice"):
            continue  # pydantic's union branch names are not fields
        else:
            text += f".{part}"
    return text or None
