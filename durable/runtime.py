"""The durable runtime of one kernel (`kernel.durability`): starts durable processes as
DBOS workflows, hosts their runs on this kernel, lists, waits for, resumes and cancels
them, and takes over the unfinished ones of kernels that died.

One kernel per Python process runs it (DBOS is one instance per process). Each boot is a
new DBOS executor, with its own id; a kernel that boots (and, every DURABLE_MONITOR_S, a
running one) resumes the unfinished durable processes of executors that are no longer
alive (`kernels.py` says which are), through DBOS's recovery, which hands each to exactly
one live kernel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any

import anyio
import anyio.to_thread
from dbos import DBOS, SetWorkflowID
from dbos._error import DBOSAwaitedWorkflowCancelledError, DBOSException, DBOSNonExistentWorkflowError

from llmos.durable import engine
from llmos.durable.engine import DbosSteps, isolated
from llmos.durable.kernels import KernelRow, Kernels
from llmos.durable.workflows import RUN, SUPERVISOR, supervise
from llmos.kernel import params
from llmos.kernel.durable import DurableInfo, DurableSpec, DurableState, exit_record, failed_record
from llmos.kernel.errors import (InvalidRequest, InvalidState, MailboxFull, ModelNotServed, NoSuchDurableProcess,
                                 NoSuchModel, NoSuchProcess, SyscallError, Timeout)
from llmos.kernel.journal import WAIT_END_STEP, Journal, current_step_key, key_id
from llmos.kernel.kernel import Kernel
from llmos.kernel.process import ExitStatus, Process, ProcessInfo, ProcessStats, ProcState

log = logging.getLogger("llmos.durable")
SHUTDOWN = "kernel shutdown"
TAKEN_OVER = "taken over by another kernel"
START_WAIT_S = 30.0  # a spawn waits this long for its process to start here (DBOS writes first)
START_ATTEMPTS = 30  # a run whose process the kernel refuses (its table full) tries again this often ...
START_RETRY_S = 1.0  # ... this far apart
START_POLL_S = 0.5  # in a cluster: how long a spawn waits to see its run start here before saying it is queued


def new_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class DbosDurability:
    """kernel/durable.py's `Durability`, on DBOS."""

    def __init__(self, kernel: Kernel, url: str, api_url: str | None = None, capacity: int | None = None) -> None:
        self.kernel = kernel
        self.url = url
        self.api_url = api_url
        self.capacity = capacity  # set for a cluster: durable runs queue for a kernel with room
        self.executor_id = new_executor_id()
        self.kernels = Kernels(url, self.executor_id)
        self.running: dict[str, Process] = {}  # durable id -> its process, for the runs this kernel hosts
        self.resumed: list[str] = []  # durable ids this kernel took over from dead kernels
        # The reason a cancel gave, for whichever kill comes first: its own, or _stop_cancelled's
        # once the workflow reads CANCELLED (that poll raced the cancel and won at times). Kept
        # only while the process runs here.
        self.cancel_reasons: dict[str, str] = {}
        self._started: dict[str, anyio.Event] = {}  # spawns waiting for their process to start here
        self._handed: dict[str, Process | None] = {}  # ... and what started (None: the app did not load)
        self._load_error: dict[str, str] = {}  # why a run's process could not start
        self._parents: dict[str, Process] = {}  # who spawned a durable process (here): its parent, told if it fails
        self._tasks: set[asyncio.Task[Any]] = set()  # the workflow tasks running here, cancelled at shutdown
        # Handles of the supervisors started here: waiting on one awaits its task, where a
        # handle retrieved from the database polls it (a tenth of a second, and CPU, per poll).
        self._handles: dict[str, Any] = {}
        self._leaving: set[int] = set()  # pids ended because this kernel stops hosting them
        self.closing = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, resume: bool) -> None:
        """Join the kernels table, launch DBOS on the database; with `resume`, take over what
        dead kernels left unfinished, now and whenever another kernel dies. (It joins first:
        once launched it may dequeue work, and the others must know it is alive by then.)"""
        try:
            await anyio.to_thread.run_sync(self.kernels.join, self.api_url, self.capacity)
        except Exception as exc:
            raise engine.unusable(self.url, exc) from exc
        try:
            await engine.launch(self, self.url, self.executor_id, self.capacity, worker=resume)
            if resume:
                await self.take_over()
        except BaseException as exc:
            await anyio.to_thread.run_sync(self._shut_down)
            if isinstance(exc, Exception) and not isinstance(exc, SyscallError):
                raise engine.unusable(self.url, exc) from exc
            raise
        self.kernel.start_service(self.beat_forever, "llmos-durable-heartbeat")
        self.kernel.start_service(self.watch_forever, "llmos-durable-watch")
        if resume:
            self.kernel.start_service(self.monitor_forever, "llmos-durable-monitor")

    async def close(self) -> None:
        """Leave every durable process unfinished (the next boot resumes it), then stop DBOS."""
        self.closing = True
        await self._let_go(list(self.running.values()), SHUTDOWN)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await anyio.to_thread.run_sync(self._shut_down)

    async def _let_go(self, procs: list[Process], reason: str) -> None:
        """End these runs without recording how: first stop recording what they stream (a
        generation cut off here must be generated again, not replayed cut off), then kill
        them; their workflows stay unfinished, for whichever kernel resumes them."""
        for proc in procs:
            if proc.journal is not None:
                proc.journal.helpers.cancel_scope.cancel()
            self._leaving.add(proc.pid)
            self.kernel.kill(proc.pid, reason)
        for proc in procs:
            await proc.done.wait()

    def _shut_down(self) -> None:
        try:
            self.kernels.leave()
        finally:
            engine.destroy(self)

    async def beat_forever(self) -> None:
        while True:
            await anyio.sleep(params.DURABLE_HEARTBEAT_S)
            try:
                alive = await anyio.to_thread.run_sync(self.kernels.beat)
            except Exception as exc:  # a busy database misses one beat, not the kernel
                log.warning("durable: heartbeat failed: %s", exc)
                continue
            if not alive and not self.closing:  # a kernel that is leaving has let its processes go already
                await self._taken_for_dead()

    async def _taken_for_dead(self) -> None:
        """This kernel was silent long enough for the others to take over its durable
        processes: stop hosting them (another kernel runs them now), and join again."""
        if self.running:
            log.warning("durable: this kernel was taken for dead (silent over %g s); its %d durable process(es) "
                        "go on elsewhere", params.DURABLE_DEAD_AFTER_S, len(self.running))
        else:  # nothing was lost: say so quietly
            log.info("durable: this kernel was taken for dead (silent over %g s); it hosted no durable process "
                     "and joins again", params.DURABLE_DEAD_AFTER_S)
        await self._let_go(list(self.running.values()), TAKEN_OVER)
        await anyio.to_thread.run_sync(self.kernels.join, self.api_url, self.capacity)

    async def monitor_forever(self) -> None:
        await _every(params.DURABLE_MONITOR_S, "checking on other kernels", self.take_over)

    async def watch_forever(self) -> None:
        """A durable process cancelled from another kernel stops here too, even one that
        makes no syscall for a while (a cancelled process's next step stops it anyway)."""
        await _every(params.DURABLE_MONITOR_S, "looking for cancelled processes", self._stop_cancelled)

    async def take_over(self) -> list[str]:
        """Resume here the unfinished durable processes of kernels that are gone."""
        pending = await isolated(lambda: DBOS.list_workflows_async(
            status="PENDING", name=[SUPERVISOR, RUN], load_input=False, load_output=False))
        others = {w.executor_id for w in pending if w.executor_id and w.executor_id != self.executor_id}
        if not others:
            return []
        alive = await anyio.to_thread.run_sync(self.kernels.alive)
        dead = sorted(others - set(alive))
        if not dead:
            return []
        # DBOS's recovery re-enqueues only workflows still owned by these executors, so two
        # kernels taking over at once do not both run one.
        await anyio.to_thread.run_sync(DBOS._recover_pending_workflows, dead)
        await anyio.to_thread.run_sync(self.kernels.forget, dead)
        ids = [w.workflow_id for w in pending if w.name == SUPERVISOR and w.executor_id in dead]
        self.resumed += ids
        if ids:
            log.info("durable: resuming %d unfinished process(es) of stopped kernel(s): %s", len(ids), ", ".join(ids))
        return ids

    async def _stop_cancelled(self) -> None:
        if not self.running:
            return
        cancelled = await isolated(lambda: DBOS.list_workflows_async(
            workflow_ids=list(self.running), status="CANCELLED", load_input=False, load_output=False))
        for workflow in cancelled:
            proc = self.running.get(workflow.workflow_id)
            if proc is not None:
                self.kernel.kill(proc.pid, self.cancel_reasons.get(workflow.workflow_id, "cancelled"))

    # -- starting and hosting -------------------------------------------------------------------
    async def spawn(self, spec: DurableSpec, parent: Process | None) -> ProcessInfo:
        key = current_step_key()  # a durable parent's spawn: the same child again if it is replayed
        durable_id = key_id(key)[:12] if key else uuid.uuid4().hex[:12]
        if durable_id in self.running:  # a replayed spawn whose child was resumed here
            return self.running[durable_id].info()
        if await isolated(lambda: DBOS.get_workflow_status_async(durable_id)) is not None:
            return _snapshot(spec, await self.info(durable_id))  # ... that runs elsewhere, or has ended
        if self.capacity is not None:
            spec = spec.model_copy(update={"queue": engine.QUEUE})
        started = self._started.setdefault(durable_id, anyio.Event())
        if parent is not None:
            self._parents[durable_id] = parent
        self._forget_finished()
        try:
            self._handles[durable_id] = await isolated(lambda: self._start(durable_id, spec))
            # It starts here at once, unless it waits in a cluster's queue.
            with anyio.move_on_after(START_WAIT_S if spec.queue is None else START_POLL_S):
                await started.wait()
        finally:
            self._started.pop(durable_id, None)
        if durable_id in self._handed:
            proc = self._handed.pop(durable_id)
            if proc is None:  # its app did not load: the run failed for good
                raise InvalidState(f"durable process {durable_id} did not start: "
                                   f"{(await self.info(durable_id)).reason}")
            return proc.info()
        return _snapshot(spec, await self.info(durable_id))

    @staticmethod
    async def _start(durable_id: str, spec: DurableSpec) -> Any:
        with SetWorkflowID(durable_id):
            return await DBOS.start_workflow_async(supervise, spec.model_dump(mode="json"))

    def _forget_finished(self) -> None:
        """What is kept of supervisors started here that have ended: their handles (a later
        wait reads the database) and their parents."""
        for durable_id, handle in list(self._handles.items()):
            task = getattr(handle, "task", None)
            if task is None or task.done():
                del self._handles[durable_id]
                self._parents.pop(durable_id, None)

    async def host(self, spec: DurableSpec, durable_id: str) -> dict[str, Any]:
        """One run of a durable process on this kernel (the body of the `llmos.run` workflow)."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            return await self._host(spec, durable_id)
        finally:
            self._tasks.discard(task)

    async def _host(self, spec: DurableSpec, durable_id: str) -> dict[str, Any]:
        if self.closing:
            raise _unrecorded()
        async with anyio.create_task_group() as helpers:
            journal = Journal(durable_id, DbosSteps(durable_id), self.kernel, helpers)
            proc = await self._start_process(spec, durable_id, journal)
            if proc is None:  # its app no longer loads here: the run fails for good
                return {**failed_record(spec, self._load_error.pop(durable_id, "")), "final": True}
            self.running[durable_id] = proc
            self._hand(durable_id, proc)
            try:
                await proc.done.wait()
            finally:
                self.running.pop(durable_id, None)
                self.cancel_reasons.pop(durable_id, None)
                helpers.cancel_scope.cancel()
        if self.closing or proc.lost_with_kernel or proc.pid in self._leaving:
            self._leaving.discard(proc.pid)
            raise _unrecorded()
        outcome = exit_record(proc)
        if journal.diverged is not None:  # FAILED, even if the app caught the error and went on
            outcome.update(state=ProcState.FAILED.name, reason=f"ReplayDiverged: {journal.diverged}")
        # A run that diverged from its record, or was killed on purpose, is not restarted.
        return {**outcome, "final": journal.diverged is not None or proc.state is ProcState.KILLED}

    async def _start_process(self, spec: DurableSpec, durable_id: str, journal: Journal) -> Process | None:
        """The run's process, or None if its app does not load. A refusal that may pass (the
        process table full) is tried again, for a while, before it counts as a failure."""
        parent = self._parents.get(durable_id)
        for attempt in range(START_ATTEMPTS):
            try:
                model, base = await self.kernel.resolve_model(spec.model)  # loaded before its task runs
                proc = self.kernel.spawn_nowait(
                    spec.app, *spec.args, kwargs=spec.kwargs, name=spec.name, priority=spec.priority,
                    caps=spec.capabilities, quotas=spec.quotas, journal=journal, untrusted=spec.untrusted,
                    parent=parent if parent is not None and not parent.state.terminal else None)
                proc.model, proc.base = model, base
                self._load_error.pop(durable_id, None)
                return proc
            except (InvalidRequest, NoSuchModel, ModelNotServed) as exc:  # not a refusal that passes
                self._load_error[durable_id] = str(exc)
                break
            except SyscallError as exc:
                self._load_error[durable_id] = str(exc)
                if attempt + 1 < START_ATTEMPTS:
                    await anyio.sleep(START_RETRY_S)
        self._hand(durable_id, None)
        return None

    def _hand(self, durable_id: str, proc: Process | None) -> None:
        """Tell a spawn waiting here what started (None: nothing could)."""
        if durable_id in self._started:
            self._handed[durable_id] = proc
            self._started[durable_id].set()

    async def tell_parent(self, spec_data: dict[str, Any], durable_id: str, outcome: dict[str, Any]) -> None:
        """A supervised process gave up: its parent, if it still lives here, gets a message."""
        spec = DurableSpec.model_validate(spec_data)
        parent = self.running.get(spec.parent_durable_id) if spec.parent_durable_id else self._parents.get(durable_id)
        if parent is None or parent.state.terminal:
            return
        try:
            self.kernel.send(parent.pid, {"event": "durable.failed", "durable_id": durable_id, "name": spec.name,
                                          "reason": outcome["reason"]})
        except (MailboxFull, NoSuchProcess) as exc:
            log.info("durable: could not tell pid %d that %s failed: %s", parent.pid, durable_id, exc)

    # -- asking about them ------------------------------------------------------------------------
    async def wait(self, durable_id: str, timeout: float | None = None) -> ExitStatus:
        if timeout is not None and not await self._ended(durable_id):  # else its outcome is there to read
            with anyio.move_on_after(timeout) as scope:
                return await isolated(lambda: self._outcome(durable_id))
            assert scope.cancelled_caught
            raise Timeout(f"durable process {durable_id} still runs after {timeout} s")
        return await isolated(lambda: self._outcome(durable_id))

    async def _ended(self, durable_id: str) -> bool:
        status = await isolated(lambda: DBOS.get_workflow_status_async(durable_id))
        if status is None:
            raise NoSuchDurableProcess(f"no durable process {durable_id!r}")
        return status.status not in ("PENDING", "ENQUEUED", "DELAYED")

    async def _outcome(self, durable_id: str) -> ExitStatus:
        try:
            handle = self._handles.get(durable_id) or await DBOS.retrieve_workflow_async(durable_id)
            outcome = await handle.get_result(polling_interval_sec=0.1)
        except DBOSNonExistentWorkflowError:
            raise NoSuchDurableProcess(f"no durable process {durable_id!r}") from None
        except DBOSAwaitedWorkflowCancelledError:
            return ExitStatus(pid=0, name=durable_id, state=ProcState.KILLED, reason="cancelled")
        except DBOSException as exc:  # its workflow failed in DBOS (too many recoveries, say)
            return ExitStatus(pid=0, name=durable_id, state=ProcState.FAILED, reason=f"{type(exc).__name__}: {exc}")
        return ExitStatus(pid=outcome["pid"], name=outcome["name"], state=ProcState[outcome["state"]],
                          reason=outcome["reason"], result=outcome["result"], traceback=outcome["traceback"])

    async def list(self) -> list[DurableInfo]:
        supervisors = await isolated(lambda: DBOS.list_workflows_async(name=SUPERVISOR, sort_desc=True))
        alive = await anyio.to_thread.run_sync(self.kernels.alive)
        return [await self._describe(w, alive) for w in supervisors]

    async def info(self, durable_id: str) -> DurableInfo:
        found = await isolated(lambda: DBOS.list_workflows_async(workflow_ids=[durable_id], name=SUPERVISOR))
        if not found:
            raise NoSuchDurableProcess(f"no durable process {durable_id!r}")
        return await self._describe(found[0], await anyio.to_thread.run_sync(self.kernels.alive))

    async def _describe(self, workflow: Any, alive: dict[str, KernelRow]) -> DurableInfo:
        runs = await isolated(lambda: DBOS.list_workflows_async(
            workflow_id_prefix=f"{workflow.workflow_id}#", name=RUN, load_input=False, load_output=False))
        latest = max(runs, key=lambda run: int(run.workflow_id.rpartition("#")[2]), default=None)
        recorded = [] if latest is None else await isolated(
            lambda: DBOS.list_workflow_steps_async(latest.workflow_id, load_output=False))
        steps = sum(1 for step in recorded if not step["function_name"].endswith(WAIT_END_STEP))  # syscalls
        spec = DurableSpec.model_validate(workflow.input["args"][0])
        state, reason = _state(workflow, latest, alive)
        proc = self.running.get(workflow.workflow_id)
        kernel = (latest or workflow).executor_id
        return DurableInfo(id=workflow.workflow_id, name=spec.name, app=spec.app, state=state,
                           pid=proc.pid if proc is not None else None, kernel=kernel,
                           kernel_url=alive[kernel].url if kernel in alive else None,
                           steps=steps, restarts=max(0, len(runs) - 1),
                           created_at=(workflow.created_at or 0) / 1000, updated_at=(workflow.updated_at or 0) / 1000,
                           reason=reason)

    # -- acting on them -----------------------------------------------------------------------------
    async def resume(self, durable_id: str) -> DurableInfo:
        """Make it eligible to run again, from its record: any kernel with room may take it."""
        info = await self.info(durable_id)
        if info.state in (DurableState.RUNNING, DurableState.QUEUED):
            raise InvalidState(f"durable process {durable_id} is {info.state.value} (on kernel {info.kernel})")
        if info.state.finished and info.state is not DurableState.CANCELLED:
            raise InvalidState(f"durable process {durable_id} has ended ({info.state.value}); nothing to resume")
        alive = await anyio.to_thread.run_sync(self.kernels.alive)
        for workflow in await self._workflows(durable_id):
            # a workflow a live kernel runs (its supervisor, when only the run's kernel died) stays there
            if workflow.status == "CANCELLED" or (workflow.status == "PENDING" and workflow.executor_id not in alive):
                await isolated(lambda wid=workflow.workflow_id: DBOS.resume_workflow_async(wid))  # type: ignore[misc]
        return await self.info(durable_id)

    async def cancel(self, durable_id: str, reason: str = "cancelled") -> None:
        info = await self.info(durable_id)
        if info.state.finished:
            raise InvalidState(f"durable process {durable_id} has ended ({info.state.value})")
        ids = [workflow.workflow_id for workflow in await self._workflows(durable_id)]
        engine.CANCELLED.update(ids)
        self.cancel_reasons[durable_id] = reason
        await isolated(lambda: DBOS.cancel_workflows_async(ids))
        proc = self.running.get(durable_id)
        if proc is not None:
            self.kernel.kill(proc.pid, reason)
        else:  # it runs on another kernel, or ended meanwhile: no kill of this one's to name
            self.cancel_reasons.pop(durable_id, None)

    async def _workflows(self, durable_id: str) -> list[Any]:
        """Its supervisor and its runs."""
        found = await isolated(lambda: DBOS.list_workflows_async(
            workflow_ids=[durable_id], load_input=False, load_output=False))
        runs = await isolated(lambda: DBOS.list_workflows_async(
            workflow_id_prefix=f"{durable_id}#", load_input=False, load_output=False))
        return [*found, *runs]


_STATES = {"queued": ProcState.READY, "running": ProcState.RUNNING, "unfinished": ProcState.READY,
           "exited": ProcState.EXITED, "failed": ProcState.FAILED}


def _state(workflow: Any, latest: Any, alive: dict[str, KernelRow]) -> tuple[DurableState, str | None]:
    """DBOS's status of a durable process's workflows, in llmos's words."""
    status = workflow.status
    if status == "SUCCESS":
        outcome = workflow.output or {}
        return DurableState(outcome.get("state", "EXITED").lower()), outcome.get("reason")
    if status == "CANCELLED":
        return DurableState.CANCELLED, None
    if status in ("ERROR", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"):
        return DurableState.FAILED, str(workflow.error or status)
    run_status = None if latest is None else latest.status
    if status in ("ENQUEUED", "DELAYED") or run_status in ("ENQUEUED", "DELAYED"):
        return DurableState.QUEUED, None
    if (latest or workflow).executor_id in alive:
        return DurableState.RUNNING, None
    return DurableState.UNFINISHED, None


async def _every(interval: float, what: str, chore: Any) -> None:
    """`await chore()` every `interval` seconds for the kernel's life; a failure is logged, not fatal."""
    while True:
        await anyio.sleep(interval)
        try:
            await chore()
        except Exception as exc:
            log.warning("durable: %s failed: %s", what, exc)


def _unrecorded() -> BaseException:
    """What ends a run's workflow without recording how it ended, so DBOS leaves it
    unfinished (PENDING) for a kernel to resume: its task cancelled."""
    return asyncio.CancelledError("the run is let go: a kernel resumes it later")


def _snapshot(spec: DurableSpec, info: DurableInfo) -> ProcessInfo:
    """What a spawn returns for a durable process that does not run here (yet): queued in a
    cluster, running on another kernel, or already ended (a replayed spawn). Its pid is 0."""
    state = _STATES.get(info.state.value, ProcState.KILLED)
    return ProcessInfo(pid=0, ppid=spec.parent, name=spec.name, state=state, priority=spec.priority,
                       reason=info.reason, capabilities=frozenset(spec.capabilities), quotas=spec.quotas,
                       stats=ProcessStats(), started_at=info.created_at,
                       ended_at=info.updated_at if info.state.finished else None,
                       durable_id=info.id)


__all__ = ["DbosDurability", "new_executor_id"]
