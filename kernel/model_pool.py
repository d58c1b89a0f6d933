"""The base models a kernel runs besides its own, loaded when a process asks for one.

A kernel boots with one model (`Kernel.driver`, never unloaded) and the variants of it a
process may switch to (derived models, LoRA adapters, served in its batches). A process may
also move to a model of another base (`set_model("gemma3-270m")`): the pool loads that base
with a `ModelLoader` (plugged in by llmos.boot), gives it a scheduler and a generation loop
of its own (jobs of different bases never share a batch; their steps take turns on the
compute thread), and routes the process's generations there.

Idle bases unload as Ollama unloads them: one with no generation queued or running for
`keep_alive_s` goes; loading one more than `max_loaded` bases (the kernel's own counted),
or past `budget_bytes` of weights, first unloads the least recently used idle ones, and
refuses (ModelNotServed) if the busy ones leave no room. A process whose base was unloaded
gets it loaded again by its next generation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import anyio
import anyio.to_thread

from llmos.kernel.errors import ModelNotServed
from llmos.kernel.generation import GenerationService
from llmos.kernel.model import ModelDriver

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelLoader(Protocol):
    """How the kernel loads models by name (llmos.booting.KernelModelLoader). Blocking:
    called in a worker thread. A name it does not know, or cannot load, is a ValueError
    (ConfigError and its kind) saying why."""

    def base_of(self, name: str) -> str:
        """The base model `name` runs on: itself for a base model, its root for a derived one."""
        ...

    def load_base(self, name: str) -> ModelDriver: ...

    def load_variant(self, name: str, base: ModelDriver) -> ModelDriver:
        """`name` (a derived model or adapter of `base`) as a driver over `base`'s engine."""
        ...


def weight_bytes(driver: ModelDriver) -> int:
    """What a loaded model holds in memory, as its driver says (0: it does not say)."""
    return int(getattr(driver, "memory_bytes", 0) or 0)


@dataclass(eq=False)
class Resident:
    """A base model the pool has loaded: its driver, generation loop and variants."""

    name: str
    driver: ModelDriver
    service: GenerationService
    variants: dict[str, ModelDriver]
    last_used: float = field(default_factory=time.monotonic)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def busy(self) -> bool:
        return bool(self.service.jobs)

    def touch(self) -> None:
        self.last_used = time.monotonic()


class ModelPool:
    def __init__(self, make_service: Callable[[str, ModelDriver, dict[str, ModelDriver]], GenerationService],
                 start: Callable[[Resident], None], *, own_bytes: int, keep_alive_s: float, max_loaded: int,
                 budget_bytes: int | None) -> None:
        self._make_service = make_service  # the kernel's: a scheduler like its own, askers on that base
        self._start = start  # runs a resident's generation loop in the kernel's task group, under its scope
        self.own_bytes = own_bytes  # the kernel's own model, always loaded
        self.keep_alive_s = keep_alive_s
        self.max_loaded = max_loaded
        self.budget_bytes = budget_bytes
        self.loader: ModelLoader | None = None  # plugged in by llmos.boot
        self.residents: dict[str, Resident] = {}
        self._loading = anyio.Lock()  # one load at a time: each makes room for itself first

    def services(self) -> Iterable[GenerationService]:
        return [r.service for r in self.residents.values()]

    # -- names ------------------------------------------------------------------------------------
    async def base_of(self, name: str) -> str:
        loader = self._need_loader(name)
        return await self._ask(lambda: loader.base_of(name))

    async def resident(self, base: str) -> Resident:
        """The loaded base `base`, loaded now (making room) if it is not."""
        async with self._loading:  # two processes asking at once load it once
            found = self.residents.get(base)
            if found is None:
                found = await self._load(base)
        found.touch()
        return found

    async def variant(self, resident: Resident, name: str) -> ModelDriver:
        """`name` over `resident`'s engine (itself for its own name), loaded on first use."""
        if name not in resident.variants:
            loader = self._need_loader(name)
            resident.variants[name] = await self._ask(lambda: loader.load_variant(name, resident.driver))
        return resident.variants[name]

    # -- loading and unloading ------------------------------------------------------------------
    async def _load(self, base: str) -> Resident:
        loader = self._need_loader(base)
        self._make_room(extra_models=1, extra_bytes=0)
        driver = await self._ask(lambda: loader.load_base(base))
        try:
            self._make_room(extra_models=0, extra_bytes=weight_bytes(driver))
        except ModelNotServed:
            self._release(driver)
            raise
        variants: dict[str, ModelDriver] = {base: driver}
        resident = Resident(base, driver, self._make_service(base, driver, variants), variants)
        self.residents[base] = resident
        self._start(resident)
        log.info("loaded %s beside the kernel's model (%d bases loaded)", base, len(self.residents) + 1)
        return resident

    def _make_room(self, extra_models: int, extra_bytes: int) -> None:
        """Unload idle bases, least recently used first, until `extra_models` more bases and
        `extra_bytes` more weights fit; ModelNotServed if the busy ones leave no room."""
        idle = sorted((r for r in self.residents.values() if not r.busy()), key=lambda r: r.last_used)
        while self._over(extra_models, extra_bytes) and idle:
            self.unload(idle.pop(0), "to make room")
        if self._over(extra_models, extra_bytes):
            busy = ", ".join(sorted(self.residents)) or "none"
            raise ModelNotServed(f"no room for another model: {len(self.residents) + 1} loaded (at most "
                                 f"{self.max_loaded}), {self._loaded_bytes() / 2**30:.2f} GiB of weights (budget "
                                 f"{self._budget_text()}); busy besides the kernel's own: {busy}")

    def _over(self, extra_models: int, extra_bytes: int) -> bool:
        too_many = 1 + len(self.residents) + extra_models > self.max_loaded
        too_big = self.budget_bytes is not None and self._loaded_bytes() + extra_bytes > self.budget_bytes
        return too_many or too_big

    def _loaded_bytes(self) -> int:
        return self.own_bytes + sum(weight_bytes(r.driver) for r in self.residents.values())

    def _budget_text(self) -> str:
        return "none" if self.budget_bytes is None else f"{self.budget_bytes / 2**30:.2f} GiB"

    def unload(self, resident: Resident, why: str) -> None:
        """Stop its loop and drop it (it must have no jobs: the loop holds none then)."""
        if self.residents.get(resident.name) is not resident:
            return
        del self.residents[resident.name]
        resident.service.closed = True  # a request prepared meanwhile is refused, not left waiting
        resident.scope.cancel()
        self._release(resident.driver)
        log.info("unloaded %s (%s)", resident.name, why)

    @staticmethod
    def _release(driver: ModelDriver) -> None:
        close = getattr(driver, "close", None)
        if callable(close):
            close()

    async def reap_idle(self) -> None:
        """The pool's chore for the kernel's life: unload what has been idle for keep_alive_s."""
        while True:  # at most a second late: one wake a second costs nothing measurable
            await anyio.sleep(min(max(self.keep_alive_s / 4, 0.05), 1.0))
            now = time.monotonic()
            for resident in list(self.residents.values()):
                if not resident.busy() and now - resident.last_used >= self.keep_alive_s:
                    self.unload(resident, f"idle for {self.keep_alive_s:g} s")

    # -- helpers ----------------------------------------------------------------------------------
    def _need_loader(self, name: str) -> ModelLoader:
        if self.loader is None:
            raise ModelNotServed(f"this kernel cannot load models by name, so not {name!r} "
                                 "(boot it with llmos.boot to load them)")
        return self.loader

    @staticmethod
    async def _ask(work: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(work)
        except ValueError as exc:  # ConfigError and its kind: unknown, unloadable, a bad adapter
            raise ModelNotServed(str(exc)) from None
