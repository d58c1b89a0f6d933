"""`llmos serve`: boot one kernel, keep its model warm, and serve it over HTTP (uvicorn)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn

import llmos
from llmos.home import llmos_home
from llmos.library import default_model, variants_of
from llmos.library_listing import list_models
from llmos.server import auth, procs_api, telemetry, wire
from llmos.server.app import create_app
from llmos.server.console import DaemonConsole
from llmos.server.gateway import Gateway
from llmos.server.openai_api import ServedModel

log = logging.getLogger(__name__)
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


@dataclass(frozen=True)
class ServeOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    model: Any = None  # a model name, a driver; None: the library's default, else llmos.DEFAULT_MODEL
    policy: str = "fifo"
    max_queue: int | None = None
    api_key: str | None = None  # None: LLMOS_API_KEY or LLMOS_HOME/api_key
    cluster: str | None = None  # a PostgreSQL URL: this kernel joins the cluster that shares it
    capacity: int | None = None  # in a cluster: durable processes this kernel runs at once
    memory: str | None = None  # where memory lives: "embedded" (LLMOS_HOME) or a `chroma run` server's URL
    boot_options: tuple[tuple[str, Any], ...] = ()  # more keyword arguments for llmos.boot

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):  # what the other kernels of a cluster can reach
            host = socket.gethostname()
        return f"http://{host}:{self.port}"

    def boot_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.boot_options)
        if self.max_queue is not None:
            kwargs["max_queue"] = self.max_queue
        if self.cluster is not None:
            kwargs.update(durable=self.cluster, api_url=self.url())
        if self.capacity is not None:
            kwargs["durable_capacity"] = self.capacity
        if self.memory is not None:
            kwargs["memory"] = self.memory
        return kwargs


def resolve_key(options: ServeOptions) -> str | None:
    """The key to require; refuses to serve beyond loopback without one."""
    key = options.api_key or auth.configured_key(llmos_home())
    if key is None and not wire.is_loopback(options.host):
        raise llmos.ConfigError(f"refusing to serve on {options.host} without an API key: set {auth.ENV} "
                                f"or run `llmos serve --new-key` (loopback only may go without one)")
    return key


def served_models(kernel: Any) -> list[ServedModel]:
    models = []
    if kernel.driver is not None:
        name = kernel.driver.name
        aliases = next((tuple(m.aliases) for m in llmos.available_models() if m.name == name), ())
        models.append(ServedModel(id=name, context_length=kernel.driver.context_length, aliases=aliases))
    if kernel.embedder is not None:
        name = getattr(kernel.embedder, "name", "embeddings")
        models.append(ServedModel(id=name, context_length=256, aliases=(name.lower(), "minilm"), kind="embedding"))
    return models


def listed_models(kernel: Any) -> list[tuple[str, int | None]]:
    """What /v1/models lists besides the kernel's model: the library's derived models of it
    (of its base, if it runs a derived one), and the other models it has loaded now."""
    if kernel.driver is None or kernel.models.loader is None:
        return []
    base = getattr(kernel.driver, "base", kernel.driver)
    loaded = [(name, resident.driver.context_length) for resident in kernel.models.residents.values()
              for name in resident.variants]
    return [*((name, None) for name in variants_of(base.name, llmos_home())), *loaded]


def loadable_models(kernel: Any) -> list[tuple[str, int | None]]:
    """Every model a request may name besides those: each of `llmos models list` that runs
    here (a model of another base loads on demand, and unloads when idle)."""
    if kernel.driver is None or kernel.models.loader is None:
        return []
    return [(row.name, int(row.context_length) if row.context_length.isdigit() else None)
            for row in list_models(llmos_home()) if not row.driver.startswith("unsupported")]


async def serve(options: ServeOptions, on_ready: Callable[[str, str | None, Any], None] = lambda url, key, kernel: None) -> None:
    """Boot the kernel and serve until cancelled or signalled (SIGINT, SIGTERM)."""
    key = resolve_key(options)
    model = default_model() if options.model is None else options.model  # the library's, else smollm2
    async with llmos.boot(model, policy=options.policy, **options.boot_kwargs()) as kernel, \
            telemetry.exporting(kernel):
        kernel.console = console = DaemonConsole()  # processes' output and questions, for HTTP clients
        gateway = await Gateway.start(kernel)
        app = create_app(gateway, models=served_models(kernel), embedder=kernel.embedder, api_key=key,
                         listed=lambda: listed_models(kernel), loadable=lambda: loadable_models(kernel))
        app.state.kernel = kernel
        app.state.console = console
        config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            async def serve_then_stop() -> None:
                try:
                    await server.serve()
                finally:
                    tg.cancel_scope.cancel()  # the daemon's chores end with the server

            tg.start_soon(serve_then_stop)
            tg.start_soon(procs_api.reap_forever, app)
            while not server.started:
                if server.should_exit:  # the port was taken, say
                    break
                await anyio.sleep(0.01)
            if server.started:
                host = f"[{options.host}]" if ":" in options.host else options.host
                on_ready(f"http://{host}:{options.port}", key, kernel)
