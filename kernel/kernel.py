"""The kernel: owns the process table, runs each process in its own task, and routes
every syscall through the dispatcher.

Its public methods act as the kernel itself (pid 0): they check no capabilities, and are
for the code that boots a kernel. A process reaches them only through a syscall, whose
rights the dispatcher has checked before the handler (llmos.syscalls) calls them.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

import anyio
import pydantic_core
from anyio.abc import TaskGroup

from llmos.kernel import capabilities, loader, params
from llmos.kernel.audit import AuditLog
from llmos.kernel.console import Console
from llmos.kernel.decisions import DecisionPolicy
from llmos.kernel.dispatch import Dispatcher, SyscallTable
from llmos.kernel.errors import (DurabilityUnavailable, InvalidRequest, InvalidState, MailboxFull, ModelError,
                                 ModelNotServed, NoSuchProcess, SyscallError, Timeout)
from llmos.kernel.durable import Durability, DurableSpec, RestartPolicy
from llmos.kernel.generation import GenerationService
from llmos.kernel.ipc import Message
from llmos.kernel.journal import Journal, forget_step_key
from llmos.kernel.library import ModelLibrary
from llmos.kernel.loader import bind, resolve_app
from llmos.kernel.memory import MemorySystem
from llmos.kernel.model import Embedder, ModelDriver
from llmos.kernel.model_pool import ModelPool, Resident, weight_bytes
from llmos.kernel.ports import KernelModelPort
from llmos.kernel.process import ExitStatus, Process, ProcessInfo, ProcState, Quotas
from llmos.kernel.proctable import ProcessTable
from llmos.kernel.scheduler import Scheduler
from llmos.kernel.stats import KernelStatistics, TraceEvent
from llmos.kernel.tools import ToolProvider
from llmos.kernel.watchdog import LoopWatchdog

log = logging.getLogger(__name__)

# Builds the object an app receives as `sys` (llmos.syscalls.Sys, wired in by llmos.boot).
HandleFactory = Callable[["Kernel", Process], Any]


class Kernel:
    def __init__(self, table: SyscallTable, handle: HandleFactory, driver: ModelDriver | None = None,
                 scheduler: Scheduler | None = None, memory: MemorySystem | None = None) -> None:
        self.procs = ProcessTable()
        self.dispatcher = Dispatcher(self, table)
        self.driver = driver
        self.scheduler = scheduler or Scheduler()
        self.batch_limit = self.scheduler.max_batch  # as asked, before any driver's own limit
        if driver is not None:  # the scheduler admits no more than the driver holds
            self.scheduler.max_batch = min(self.scheduler.max_batch, driver.max_batch)
            self.scheduler.kv = getattr(driver, "kv", None)  # a driver with KV blocks admits by them
        # Variants of the driver's model a process may use instead (derived models, LoRA
        # adapters served in the same batch): loaded by name on first use through the pool's
        # loader (plugged in by llmos.boot), kept for the kernel's life.
        self.variants: dict[str, ModelDriver] = {}
        # Measures the loop's lag and names (and past a limit, stops) a process that blocks it.
        self.watchdog = LoopWatchdog(self, runner=Kernel._run.__code__)
        self.generation = (self._wired(GenerationService(driver, self.scheduler, self.variants), None)
                           if driver is not None else None)
        # Models of other bases processes moved to (`set_model`), each with its own loop;
        # idle ones unload (kernel/model_pool.py).
        self.models = ModelPool(self._service_for_base, self._start_resident,
                                own_bytes=weight_bytes(driver) if driver is not None else 0,
                                keep_alive_s=params.MODEL_KEEP_ALIVE_S, max_loaded=params.MAX_LOADED_MODELS,
                                budget_bytes=params.MODEL_MEMORY_BUDGET)
        self._make_handle = handle
        self.memory = memory  # the store and context windows (llmos.memory), plugged in by llmos.boot
        if memory is not None:
            memory.attach(KernelModelPort(self.base_driver_for, self.driver_named, self.generation_for,
                                          self.dispatcher))
        self.console: Console | None = None  # the user's terminal, plugged in by `llmos run` or the shell
        self.audit: AuditLog | None = None  # refused and sensitive calls, appended to a file (by llmos.boot)
        self.tools: ToolProvider | None = None  # the tools processes may call, plugged in by llmos.boot
        self.decisions: DecisionPolicy | None = None  # how choose and chat(tools=, json_schema=) ask, by llmos.boot
        self.embedder: Embedder | None = None  # what `choose` measures meaning with, plugged in by llmos.boot
        self.durability: Durability | None = None  # durable processes' runtime (llmos.durable), by llmos.boot
        self.library: ModelLibrary | None = None  # the models.* syscalls' library (llmos.library_port), by llmos.boot
        self.topics: dict[str, set[int]] = {}  # topic name -> pids subscribed to it
        # Processes no syscall may kill, suspend or renice (a daemon's own, like init): only
        # the kernel's shutdown ends them. Set by whoever starts such a process.
        self.protected: set[int] = set()
        self._tg: TaskGroup | None = None
        self.booted_at = time.time()

    def _askers(self, base: str | None) -> list[int]:
        """The processes that may ask a generation of base `base` (None: the kernel's own
        model): the live ones on it, not suspended."""
        return [p.pid for p in self.procs.live.values() if p.state is not ProcState.SUSPENDED and p.base == base]

    def _service_for_base(self, base: str, driver: ModelDriver, variants: dict[str, ModelDriver]) -> GenerationService:
        """A generation loop for another base model: a scheduler like the kernel's own (its
        policy and limits, the same suspended processes), admitting by that model's KV."""
        scheduler = Scheduler(self.scheduler.policy.name, max_batch=min(self.batch_limit, driver.max_batch),
                              quantum=self.scheduler.quantum, max_queue=self.scheduler.max_queue,
                              suspended=self.scheduler.suspended)
        scheduler.kv = getattr(driver, "kv", None)
        return self._wired(GenerationService(driver, scheduler, variants), base)

    def _wired(self, service: GenerationService, base: str | None) -> GenerationService:
        """A generation loop of base `base` (None: the kernel's own model), told who may ask it
        and that its text handed over mid-burst is a beat of the watchdog's (LoopWatchdog.alive)."""
        service.askers = lambda: self._askers(base)
        service.loop_alive = self.watchdog.alive
        return service

    def _start_resident(self, resident: Resident) -> None:
        async def serve() -> None:
            with resident.scope:
                await resident.service.serve()

        self.start_service(serve, f"llmos-generation-{resident.name}")

    def services(self) -> list[GenerationService]:
        """Every generation loop: the kernel's own model's, then the other bases'."""
        return ([self.generation] if self.generation is not None else []) + list(self.models.services())

    def base_driver_for(self, proc: Process) -> ModelDriver | None:
        """The base model `proc` generates with (its variant's engine), as loaded now."""
        if proc.base is None:
            return self.driver
        resident = self.models.residents.get(proc.base)
        if resident is None:
            raise ModelError(f"{proc.base}, the model of process {proc.pid}, was unloaded while idle; its next "
                             "generation loads it again")
        return resident.driver

    def driver_named(self, name: str) -> ModelDriver:
        """A base model loaded now, by name; ModelError if it is not."""
        if self.driver is not None and name == self.driver.name:
            return self.driver
        resident = self.models.residents.get(name)
        if resident is None:
            raise ModelError(f"{name} is not loaded now (it was unloaded while idle; a generation loads it again)")
        return resident.driver

    async def generation_for(self, proc: Process) -> GenerationService:
        """The loop that serves `proc`'s model, its base loaded again if it was unloaded."""
        if proc.base is None:
            if self.generation is None:
                raise ModelError("this kernel has no model loaded; boot it with a model to use choose, chat or "
                                 "generate")
            return self.generation
        resident = await self.models.resident(proc.base)
        if proc.model is not None:
            await self.models.variant(resident, proc.model)
        return resident.service

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> Kernel:
        self._tg = await anyio.create_task_group().__aenter__()
        if self.watchdog.enabled:
            self._tg.start_soon(self.watchdog.run, name="llmos-watchdog")
        if self.generation is not None:
            self._tg.start_soon(self.generation.serve, name="llmos-generation")
        self._tg.start_soon(self.models.reap_idle, name="llmos-model-keep-alive")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._tg is not None
        for proc in list(self.procs.live.values()):
            proc.lost_with_kernel = True
            self.kill(proc.pid, "kernel shutdown")
        self._tg.cancel_scope.cancel()
        try:
            # The task group gets only its children's fate; an error of the `async with`
            # body propagates as itself rather than wrapped in an ExceptionGroup.
            await self._tg.__aexit__(None, None, None)
        finally:
            self._tg = None
            if self.memory is not None:
                with anyio.CancelScope(shield=True):
                    await self.memory.aclose()

    def start_service(self, service: Callable[[], Awaitable[None]], name: str) -> None:
        """Run `service()` in the kernel's task group until the kernel shuts down (the
        durable runtime's heartbeat, say)."""
        if self._tg is None:
            raise InvalidState("the kernel is not running")
        self._tg.start_soon(service, name=name)

    @property
    def trace(self) -> deque[TraceEvent]:
        """The most recent syscalls, oldest first (a ring of params.TRACE_SIZE events)."""
        return self.dispatcher.trace

    def statistics(self) -> KernelStatistics:
        return KernelStatistics(booted_at=self.booted_at, live_processes=len(self.procs.live),
                                syscalls=self.dispatcher.calls, scheduler=self.scheduler.statistics(),
                                generation=None if self.generation is None else self.generation.statistics(),
                                loop=self.watchdog.statistics() if self.watchdog.enabled else None,
                                models=tuple(r.service.statistics() for r in self.models.residents.values()))

    # -- processes --------------------------------------------------------------------------
    def spawn_nowait(self, app: Any, *args: Any, name: str | None = None, priority: int = params.DEFAULT_NICE,
                     caps: Iterable[str] | None = None, quotas: Quotas | None = None,
                     parent: Process | None = None, kwargs: dict[str, Any] | None = None,
                     journal: Journal | None = None, untrusted: Iterable[str] = ()) -> Process:
        """Start an ordinary process now (`journal`: a durable run's record, from llmos.durable;
        `untrusted`: where untrusted text it starts with came from, besides its parent's)."""
        if self._tg is None:
            raise InvalidState("the kernel is not running; use 'async with llmos.boot() as kernel'")
        main = resolve_app(app)
        runnable = bind(main, args, kwargs or {})
        granted = _granted(priority, parent, caps)
        proc = Process(pid=self.procs.allocate_pid(), ppid=parent.pid if parent else params.KERNEL_PID,
                       name=name or getattr(main, "__qualname__", "app"), priority=priority,
                       capabilities=granted, quotas=quotas or Quotas(), journal=journal,
                       untrusted=list(dict.fromkeys([*(parent.untrusted if parent else ()), *untrusted])),
                       model=parent.model if parent else None, base=parent.base if parent else None)
        proc.cancel_scope = anyio.CancelScope()
        if proc.quotas.deadline_s is not None:
            proc.cancel_scope.deadline = anyio.current_time() + proc.quotas.deadline_s
        self.procs.add(proc)
        proc.state = ProcState.READY
        self._tg.start_soon(self._run, proc, runnable, args, name=f"llmos-pid-{proc.pid}")
        return proc

    async def spawn(self, app: Any, *args: Any, durable: bool = False, restart: RestartPolicy | None = None,
                    model: str | None = None, **options: Any) -> ProcessInfo:
        """Start `app(sys, *args)` as a new process; returns its snapshot (with its pid).
        `durable=True`: it survives the kernel (see `spawn_durable`); `restart`: supervised.
        `model`: what it generates with instead of its parent's model (loaded first)."""
        if durable or restart is not None:
            return await self.spawn_durable(app, args, restart=restart, model=model, **options)
        chosen = await self.resolve_model(model) if model is not None else None
        proc = self.spawn_nowait(app, *args, **options)
        if chosen is not None:  # before its task first runs
            proc.model, proc.base = chosen
        return proc.info()

    async def spawn_durable(self, app: Any, args: tuple[Any, ...] = (), *, kwargs: dict[str, Any] | None = None,
                            name: str | None = None, priority: int = params.DEFAULT_NICE,
                            caps: Iterable[str] | None = None, quotas: Quotas | None = None,
                            parent: Process | None = None, restart: RestartPolicy | None = None,
                            model: str | None = None) -> ProcessInfo:
        """Start a durable process: its syscalls are recorded, and it resumes after the kernel
        dies. Its app must be importable by reference and its arguments JSON (EINVAL). `model`
        is recorded with it: every run generates with it (loaded first; known here, or refused now);
        by default its parent's, as a child that is not durable inherits it."""
        durability = self.durable_runtime()
        ref = loader.reference(app)
        bind(resolve_app(ref), args, kwargs or {})
        try:  # its runs, the first one too, get the arguments as JSON gives them back
            args, kwargs = pydantic_core.from_json(pydantic_core.to_json([args, kwargs or {}]))
        except pydantic_core.PydanticSerializationError as exc:
            raise InvalidRequest(f"a durable process's arguments must be JSON, to start it again later: {exc}") from None
        model = model if model is not None or parent is None else parent.model
        if model is not None:  # after the cheap checks: this may load it
            await self.resolve_model(model)
        granted = _granted(priority, parent, caps)
        spec = DurableSpec(app=ref, args=tuple(args), kwargs=kwargs, name=name or ref.rpartition(":")[2],
                           priority=priority, capabilities=tuple(sorted(granted)), quotas=quotas or Quotas(),
                           restart=restart or RestartPolicy(), parent=parent.pid if parent else params.KERNEL_PID,
                           parent_durable_id=None if parent is None or parent.journal is None
                           else parent.journal.durable_id, untrusted=tuple(parent.untrusted) if parent else (),
                           model=model)
        return await durability.spawn(spec, parent)

    def model_library(self) -> ModelLibrary:
        """The model library, or ModelNotServed (ENODEV) for a kernel booted without one."""
        if self.library is None:
            raise ModelNotServed("this kernel has no model library (it was not booted by llmos.boot)")
        return self.library

    def loaded_models(self) -> list[str]:
        """The models this kernel has loaded: its own, the other bases, and their variants."""
        names = ([self.driver.name] if self.driver is not None else []) + list(self.variants)
        for resident in self.models.residents.values():
            names += [name for name in resident.variants if name not in names]
        return names

    def durable_runtime(self) -> Durability:
        """The durable runtime, or DurabilityUnavailable (ENODEV) for a kernel without one."""
        if self.durability is None:
            raise DurabilityUnavailable("this kernel runs no durable processes (it was booted with durable=None)")
        return self.durability

    async def _run(self, proc: Process, main: Any, args: tuple[Any, ...]) -> None:
        # The watchdog finds this frame on the loop's stack and reads `proc` (and `self`) from
        # it to name a process that blocks the loop: keep these names (kernel/watchdog.py).
        assert proc.cancel_scope is not None
        forget_step_key()
        try:
            with proc.cancel_scope:
                self.set_activity(proc, ProcState.RUNNING)
                try:
                    proc.result = await main(self._make_handle(self, proc), *args)
                    self._end(proc, ProcState.EXITED, None)
                except SystemExit as exc:
                    state = ProcState.EXITED if exc.code in (0, None) else ProcState.FAILED
                    self._end(proc, state, None if state is ProcState.EXITED else f"exit status {exc.code}")
                except BaseException as exc:  # a process's failure is its own, never the kernel's
                    if isinstance(exc, (anyio.get_cancelled_exc_class(), KeyboardInterrupt)):
                        raise
                    proc.traceback = traceback.format_exc()
                    self._end(proc, ProcState.FAILED, f"{type(exc).__name__}: {exc}")
            if not proc.state.terminal:  # the scope swallowed a kill or the deadline
                reason = proc.kill_reason or f"deadline of {proc.quotas.deadline_s} s exceeded"
                self._end(proc, ProcState.KILLED, reason)
        finally:
            if not proc.state.terminal:  # the whole kernel is being cancelled
                proc.lost_with_kernel = proc.kill_reason is None
                self._end(proc, ProcState.KILLED, proc.kill_reason or "kernel shutdown")
            self._cleanup(proc)

    def _end(self, proc: Process, state: ProcState, reason: str | None) -> None:
        if proc.state.terminal:
            return
        if proc.kill_reason is not None:  # killed, whatever it managed to do after
            state, reason = ProcState.KILLED, proc.kill_reason
        proc.state, proc.reason, proc.ended_at = state, reason, time.time()
        if state is ProcState.FAILED:
            log.info("pid %d (%s) failed: %s", proc.pid, proc.name, reason)

    def _cleanup(self, proc: Process) -> None:
        for service in self.services():
            service.cancel_owner(proc.pid)
        self.scheduler.resume(proc.pid)
        if proc.mailbox_send is not None:
            proc.mailbox_send.close()
            proc.mailbox_recv.close()
            proc.mailbox_send = proc.mailbox_recv = None
        for topic in list(self.topics):
            self.unsubscribe(proc, topic)
        proc.context = None  # an ended process keeps only what `wait` and `ps` report
        self.procs.retire(proc)
        proc.done.set()

    async def wait(self, pid: int, timeout: float | None = None) -> ExitStatus:
        """Wait for a process to end, reap it, and return how it ended."""
        proc = self.procs.get(pid)
        if not proc.done.is_set():
            with anyio.move_on_after(timeout) as scope:
                await proc.done.wait()
            if scope.cancelled_caught:
                raise Timeout(f"process {pid} still runs after {timeout} s")
        self.procs.reap(pid)
        return proc.exit_status()

    def kill(self, pid: int, reason: str = "killed") -> None:
        """End a process now; its in-flight generation is cancelled. Killing an ended one is a no-op."""
        proc = self.procs.get(pid)
        if proc.state.terminal:
            return
        proc.kill_reason = proc.kill_reason or reason
        assert proc.cancel_scope is not None
        proc.cancel_scope.cancel()
        proc.runnable.set()  # a suspended process must wake to die
        for service in self.services():
            service.cancel_owner(pid)

    def suspend(self, pid: int) -> None:
        proc = self.procs.get_live(pid)
        if proc.state is ProcState.SUSPENDED:
            raise InvalidState(f"process {pid} is already suspended")
        proc.state_before_suspend = proc.state
        proc.state = ProcState.SUSPENDED
        proc.runnable = anyio.Event()  # anyio events cannot be cleared: a fresh, unset one
        for scheduler in self._schedulers():
            scheduler.suspend(pid)

    def resume(self, pid: int) -> None:
        proc = self.procs.get_live(pid)
        if proc.state is not ProcState.SUSPENDED:
            raise InvalidState(f"process {pid} is not suspended (it is {proc.state.name})")
        proc.state = proc.state_before_suspend or ProcState.RUNNING
        proc.runnable.set()
        for scheduler in self._schedulers():
            scheduler.resume(pid)

    def nice(self, pid: int, priority: int) -> None:
        _check_priority(priority)
        proc = self.procs.get_live(pid)
        proc.priority = priority
        for scheduler in self._schedulers():
            scheduler.set_priority(pid, priority)

    def _schedulers(self) -> list[Scheduler]:
        """The kernel's scheduler and those of the other bases loaded (one suspended set)."""
        return [self.scheduler, *(service.scheduler for service in self.models.services())]

    async def set_model(self, pid: int, name: str | None) -> None:
        """Move a process to another model: a variant of the kernel's model (a derived model or
        LoRA adapter, served in the same batches), or a model of another base (loaded beside
        the kernel's, kernel/model_pool.py), or back to the kernel's model (None, or its name).
        Its context window is kept; its next generation uses the model."""
        proc = self.procs.get_live(pid)
        chosen = await self.resolve_model(name)
        proc.model, proc.base = chosen

    async def resolve_model(self, name: str | None) -> tuple[str | None, str | None]:
        """(model, base) for a process on `name`, loaded now if need be (ModelNotServed if
        it cannot be): (None, None) is the kernel's own model."""
        if name is None or (self.driver is not None and name == self.driver.name):
            return None, None
        if name in self.variants:
            return name, None
        if self.models.loader is None:
            raise ModelNotServed(f"this kernel serves {'no model' if self.driver is None else self.driver.name} "
                                 f"and cannot load others, so not {name!r}")
        base = await self.models.base_of(name)
        if self.driver is not None and base == self._own_base().name:
            self.variants[name] = await self._load_variant(name)
            return name, None
        resident = await self.models.resident(base)
        await self.models.variant(resident, name)
        return name, base

    def _own_base(self) -> ModelDriver:
        assert self.driver is not None
        return getattr(self.driver, "base", None) or self.driver  # a derived model runs on its base's engine

    async def _load_variant(self, name: str) -> ModelDriver:
        loader, own = self.models.loader, self._own_base()
        assert loader is not None
        try:
            return await anyio.to_thread.run_sync(lambda: loader.load_variant(name, own))
        except ValueError as exc:  # ConfigError and its kind: a bad adapter
            raise ModelNotServed(str(exc)) from None

    def ps(self, include_ended: bool = False) -> list[ProcessInfo]:
        procs = list(self.procs.live.values())
        if include_ended:
            procs += list(self.procs.ended.values())
        return [p.info() for p in sorted(procs, key=lambda p: p.pid)]

    def begin_wait(self, proc: Process) -> None:
        """A blocking syscall of `proc` begins: it shows BLOCKED until its last one ends."""
        proc.waits += 1
        self.set_activity(proc, ProcState.BLOCKED)

    def end_wait(self, proc: Process) -> None:
        proc.waits -= 1
        if proc.waits == 0:
            self.set_activity(proc, ProcState.RUNNING)

    def set_activity(self, proc: Process, state: ProcState) -> None:
        """RUNNING or BLOCKED as the process enters or leaves a wait; a suspension sticks."""
        if proc.state is ProcState.SUSPENDED:
            proc.state_before_suspend = state
        elif not proc.state.terminal:
            proc.state = state

    # -- messages ---------------------------------------------------------------------------
    def send(self, target: int | str, payload: Any, sender: Process | None = None) -> Message:
        """Deliver a copy of a JSON-able payload to a live process's mailbox, without blocking."""
        receiver = self.procs.find(target)
        message = self._message(payload, sender)
        try:
            self._mailbox(receiver)[0].send_nowait(message)
        except anyio.WouldBlock:
            raise MailboxFull(f"the mailbox of process {receiver.pid} ({receiver.name}) is full "
                              f"({params.MAILBOX_SIZE} messages)") from None
        return message

    @staticmethod
    def _message(payload: Any, sender: Process | None, topic: str | None = None) -> Message:
        try:
            data = pydantic_core.from_json(pydantic_core.to_json(payload))  # a private deep copy
        except pydantic_core.PydanticSerializationError as exc:
            raise InvalidRequest(f"a message payload must be JSON-serializable: {exc}") from None
        return Message(sender=sender.pid if sender else params.KERNEL_PID,
                       sender_name=sender.name if sender else "kernel", payload=data, sent_at=time.time(), topic=topic,
                       untrusted=bool(sender and sender.untrusted))

    def subscribe(self, proc: Process, topic: str) -> None:
        """From now on, messages published to `topic` also arrive in `proc`'s mailbox."""
        self.topics.setdefault(topic, set()).add(proc.pid)

    def unsubscribe(self, proc: Process, topic: str) -> None:
        subscribers = self.topics.get(topic, set())
        subscribers.discard(proc.pid)
        if not subscribers:
            self.topics.pop(topic, None)

    def publish(self, topic: str, payload: Any, sender: Process | None = None) -> int:
        """Deliver a copy to every live subscriber of `topic` (the sender too, if subscribed),
        without blocking; returns how many got it. A full mailbox misses the message rather
        than failing the publisher: one slow subscriber must not stall the others."""
        delivered = 0
        for pid in sorted(self.topics.get(topic, ())):
            try:
                self._mailbox(self.procs.live[pid])[0].send_nowait(self._message(payload, sender, topic))
                delivered += 1
            except anyio.WouldBlock:
                log.info("topic %r: the mailbox of pid %d is full; the message is dropped for it", topic, pid)
        return delivered

    async def recv(self, proc: Process, timeout: float | None = None) -> Message:
        receive = self._mailbox(proc)[1]
        try:
            return receive.receive_nowait()  # a queued message is there even for timeout=0
        except anyio.WouldBlock:
            pass
        with anyio.move_on_after(timeout):
            return await receive.receive()
        raise Timeout(f"no message arrived within {timeout} s")

    @staticmethod
    def _mailbox(proc: Process) -> tuple[Any, Any]:
        if proc.mailbox_send is None:  # created on first use: most processes never get mail
            proc.mailbox_send, proc.mailbox_recv = anyio.create_memory_object_stream[Message](params.MAILBOX_SIZE)
        return proc.mailbox_send, proc.mailbox_recv

    # -- syscalls ---------------------------------------------------------------------------
    async def syscall(self, proc: Process, request: Any) -> Any:
        return await self.dispatcher.dispatch(proc, request)


def _check_priority(priority: int) -> None:
    if not params.NICE_MIN <= priority <= params.NICE_MAX:
        raise InvalidRequest(f"priority must be within {params.NICE_MIN}..{params.NICE_MAX}, not {priority}")


def _granted(priority: int, parent: Process | None, caps: Iterable[str] | None) -> frozenset[str]:
    """A new process's capabilities (its parent's, narrowed by `caps`), once its priority is checked."""
    _check_priority(priority)
    return capabilities.narrow(parent.capabilities if parent else frozenset({capabilities.ALL}), caps)


__all__ = ["Kernel", "HandleFactory", "NoSuchProcess", "SyscallError"]
