"""The composition root: a kernel wired to the syscall table, the `Sys` handle, a model
driver, the memory system (with the drivers' embedding model) and the tools."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread

from llmos import drivers, library, plugins
from llmos.drivers import DEFAULT_MODEL, UnknownModel, remote_models
from llmos.drivers.embeddings import MINILM
from llmos.drivers.decisions import GeneratedDecisions, LikelihoodDecisions
from llmos.drivers.tools import REGISTERED, Tool, ToolBox, registration
from llmos.kernel import params
from llmos.kernel.errors import ConfigError, DurabilityUnavailable
from llmos.kernel.kernel import Kernel
from llmos.kernel.model import Embedder, ModelDriver
from llmos.kernel.scheduler import Scheduler
from llmos.frozen_heap import frozen_heap
from llmos.home import audit_log, llmos_home
from llmos.library_port import HomeLibrary
from llmos.kernel.audit import AuditLog
from llmos.kernel.memory import MemoryStore
from llmos.memory import MemoryManager, Policy
from llmos.syscalls import TABLE, Sys

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # llmos.runtime (Model's home) boots kernels with this module
    from llmos.runtime import Model


@asynccontextmanager
async def boot(model: str | Model | ModelDriver | None = DEFAULT_MODEL, *, policy: str = params.DEFAULT_POLICY,
               max_batch: int = params.MAX_BATCH, quantum: int = params.RR_QUANTUM_TOKENS,
               max_queue: int = params.MAX_QUEUE, memory: str | Path | MemoryStore | None = "embedded",
               context_policy: str | Policy = params.DEFAULT_CONTEXT_POLICY,
               context_budget: int | None = None, tools: Iterable[Tool | Callable] = (),
               mcp_servers: Mapping | str | Path | None = "config",
               embedder: Embedder | None = MINILM, durable: str | None = "embedded",
               resume: bool = True, durable_capacity: int = params.DURABLE_CAPACITY,
               api_url: str | None = None, audit: bool = True) -> AsyncIterator[Kernel]:
    """Boot a kernel for the duration of an `async with` block.

    `model`: a model name (loaded off the event loop), a loaded `Model` or driver, or None
    for a kernel without one. `policy`: "fifo", "priority" or "rr" (round-robin with a
    `quantum` of tokens). `max_queue`: generations that may wait for the model; one more is
    refused with QueueFull (EAGAIN). On exit, processes still running are killed.

    `memory`: where the archive and the memory syscalls keep items: "embedded" (chromadb in
    LLMOS_HOME/memory, opened on first use, one writer process at a time), another folder,
    "http://host:port" of a `chroma run` server, a `MemoryStore`, or None for none.
    `context_policy`: "summary+recall" or "recency" (or a `llmos.memory.Policy`).
    `context_budget`: tokens a process's context window holds (default: the model's context
    length less the reply's room); a small one makes paging easy to watch and test.

    `tools`: Python tools (functions or `@llmos.tool`s) offered besides the plugins' ones.
    `mcp_servers`: the MCP servers whose tools to offer: "config" (LLMOS_HOME/mcp.json, if
    there is one), another JSON file, a {"mcpServers": {...}} mapping, or None for none.
    `embedder`: what `choose` measures meaning with (the packaged MiniLM by default; None:
    by the model's likelihood alone).

    `durable`: where durable processes are recorded: "embedded" (LLMOS_DATABASE_URL if set,
    else SQLite in LLMOS_HOME/durable), a postgresql:// URL (a cluster's), or None for no
    durable processes. With `resume` (the default), unfinished durable processes whose
    kernel is gone resume in this one as it boots; `resume=False` leaves them for
    `kernel.durability.list()` / `resume(id)`.

    `audit`: append every refused call and every sensitive one to LLMOS_HOME/audit.log
    (`llmos audit` prints it; kernel/audit.py).
    """
    Scheduler(policy, max_batch=max_batch, quantum=quantum, max_queue=max_queue)  # fail fast on bad settings, before a load
    plugins.load()  # the plugins' models, tools and apps (once per process)
    memory_system = _memory(memory, context_policy, context_budget)  # fails fast on a bad policy
    driver = await _driver(model)
    if driver is not None:
        max_batch = min(max_batch, driver.max_batch)
    scheduler = Scheduler(policy, max_batch=max_batch, quantum=quantum, max_queue=max_queue)
    async with AsyncExitStack() as stack:  # MCP servers outlive the processes that use them
        toolbox = await _tools(stack, tools, mcp_servers)
        kernel = await stack.enter_async_context(Kernel(TABLE, Sys, driver=driver, scheduler=scheduler,
                                                        memory=memory_system))
        kernel.tools = toolbox
        if audit:
            _audit(stack, kernel)
        # A driver that cannot score options (a remote server) has tool choices generated as
        # constrained JSON instead of scored.
        kernel.decisions = LikelihoodDecisions() if getattr(driver, "can_score", True) else GeneratedDecisions()
        kernel.embedder = embedder
        kernel.library = HomeLibrary(llmos_home())
        kernel.models.loader = HomeModelLoader(llmos_home())
        _keep_models_as_configured(kernel)
        await _durability(stack, kernel, durable, resume, durable_capacity, api_url)
        stack.enter_context(frozen_heap())  # what is alive now lives as long as the kernel
        yield kernel


class HomeModelLoader:
    """The kernel's ModelLoader (kernel/model_pool.py): models by name as `load_driver`
    loads them, variants from the library of `home`."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def base_of(self, name: str) -> str:
        plugins.load()
        return library.root_base(name, self.home)

    def load_base(self, name: str) -> ModelDriver:
        return load_driver(name)

    def load_variant(self, name: str, base: ModelDriver) -> ModelDriver:
        return library.load_variant(name, base, self.home)  # type: ignore[no-any-return]


# Ollama's OLLAMA_KEEP_ALIVE and OLLAMA_MAX_LOADED_MODELS, for the models of other bases a
# kernel loads beside its own (kernel/model_pool.py); the budget is in GiB of weights.
KEEP_ALIVE_ENV, MAX_LOADED_ENV, MODEL_MEMORY_ENV = "LLMOS_KEEP_ALIVE", "LLMOS_MAX_LOADED_MODELS", "LLMOS_MODEL_MEMORY"


def _keep_models_as_configured(kernel: Kernel) -> None:
    pool = kernel.models
    pool.keep_alive_s = params.env_number(KEEP_ALIVE_ENV, pool.keep_alive_s, float, minimum=0.0, unit=" seconds")
    pool.max_loaded = params.env_number(MAX_LOADED_ENV, pool.max_loaded, int, minimum=1)
    budget = params.env_number(MODEL_MEMORY_ENV, -1.0, float, minimum=0.0, unit=" GiB")  # -1: unset, no budget
    if budget >= 0:
        pool.budget_bytes = int(budget * 2**30)


def _audit(stack: AsyncExitStack, kernel: Kernel) -> None:
    kernel.audit = AuditLog(audit_log(llmos_home()))  # the dispatcher hands it every syscall
    stack.callback(kernel.audit.close)


def load_driver(name: str, dtype: str | None = None, quant: str | None = None) -> ModelDriver:
    """A model by name (the plugins' models included), a model of the library (LLMOS_HOME/
    library.json: imported, derived or remote; llmos.library), a remote model (LLMOS_HOME/
    models.toml, or "openai:<base_url>#<model id>"), or a local Hugging Face folder by path,
    loaded on the drivers' compute thread. `dtype`, `quant`: see `llmos.load_model`. Blocking."""
    plugins.load()
    home = llmos_home()
    remote = remote_models.lookup(name, home)  # read at each lookup, as mcp.json is at each boot
    if remote is not None:
        _refuse_settings_for_remote(name, dtype, quant)
        return remote.load(home)  # type: ignore[return-value]
    try:
        return _load_local(name, dtype, quant, home)
    except UnknownModel as exc:
        configured = [spec.name for spec in remote_models.configured(home)]
        in_library = sorted(library.read_library(home).models)
        if not configured and not in_library:
            raise
        also = [f"in {home / remote_models.CONFIG_FILE}: {', '.join(configured)}" if configured else "",
                f"in the library: {', '.join(in_library)}" if in_library else ""]
        raise UnknownModel(f"{exc}; and {'; '.join(a for a in also if a)}") from None


def _refuse_settings_for_remote(name: str, dtype: str | None, quant: str | None) -> None:
    if dtype is not None or quant is not None:
        raise ConfigError(f"{name} is a remote model: its server decides its dtype and quantization")


def _load_local(name: str, dtype: str | None, quant: str | None, home: Path) -> ModelDriver:
    found = library.lookup(name, home)
    if found is not None and isinstance(found[1], library.RemoteEntry):
        _refuse_settings_for_remote(name, dtype, quant)
    if dtype is None and quant is None:
        return _load_named(name, found, dtype, quant, home)
    from llmos.drivers.quant import requested_quantization  # torch: only to ask for these
    from llmos.drivers.transformers_driver import requested_dtype

    with (requested_dtype(dtype) if dtype is not None else nullcontext(),
          requested_quantization(quant) if quant is not None else nullcontext()):  # None: what is asked outside
        return _load_named(name, found, dtype, quant, home)


def _load_named(name: str, found: tuple[str, library.Entry] | None, dtype: str | None, quant: str | None,
                home: Path) -> ModelDriver:
    if found is None:
        return drivers.load_driver(name, home)  # type: ignore[return-value]
    # A derived model's base that is not in the library (a built-in or remote model) loads
    # as any name does, with the same settings.
    return library.load(found[0], found[1], home, lambda base: load_driver(base, dtype, quant))  # type: ignore[no-any-return]


async def _driver(model: str | Model | ModelDriver | None) -> ModelDriver | None:
    if isinstance(model, str):
        return await anyio.to_thread.run_sync(load_driver, model)
    return getattr(model, "driver", model)  # a llmos.Model holds its driver


async def _tools(stack: AsyncExitStack, tools: Iterable[Tool | Callable],
                 mcp_servers: Mapping | str | Path | None) -> ToolBox:
    toolbox = ToolBox([*REGISTERED.values(), *map(registration, tools)], workspaces=llmos_home() / "workspaces")
    stack.push_async_callback(toolbox.aclose)  # its warm jailed workers end with the kernel
    if mcp_servers == "config":
        mcp_servers = llmos_home() / "mcp.json"
        if not mcp_servers.is_file():
            return toolbox
    if mcp_servers is None:
        return toolbox
    from llmos.drivers.tools import mcp_client  # the SDK loads only when servers are configured

    if isinstance(mcp_servers, Mapping):
        servers = mcp_client.parse_config(mcp_servers)
    else:
        servers = mcp_client.read_config(Path(mcp_servers))
    if servers:
        await stack.enter_async_context(mcp_client.connected(servers, toolbox))
    return toolbox


async def _durability(stack: AsyncExitStack, kernel: Kernel, durable: str | None, resume: bool, capacity: int,
                      api_url: str | None) -> None:
    """The durable runtime, closed before the kernel (so its processes stay unfinished, not
    killed). DBOS starts now only if there may be work to resume; else on first use."""
    if durable is None:
        return
    from llmos.durable import Durable, database_url_from_env  # DBOS itself loads when it starts

    url = database_url_from_env() if durable == "embedded" else durable
    runtime = Durable(kernel, llmos_home(), url, resume=resume, capacity=capacity, api_url=api_url)
    kernel.durability = runtime
    stack.push_async_callback(runtime.close)
    if runtime.has_work:
        try:
            await runtime.runtime()
        except DurabilityUnavailable as exc:
            if durable != "embedded" or url is not None:
                raise  # a database asked for by name (a cluster's) must work, or the kernel does not boot
            # LLMOS_HOME's own, held by another kernel of this process or unreadable: this
            # kernel runs without durable processes (a durable spawn says why)
            log.warning("durable processes are off in this kernel: %s", exc.message)


def _memory(memory: str | Path | MemoryStore | None, policy: str | Policy, budget: int | None) -> MemoryManager:
    if memory == "embedded":
        memory = llmos_home() / "memory"
    return MemoryManager(memory, policy=policy, context_budget=budget, embedder=MINILM)
