"""The two DBOS workflows a durable process is made of.

- `llmos.process` (its id is the durable process's id) supervises: it starts one run of the
  process after another, each a child workflow, as its restart policy says, and returns how
  the last one ended. Erlang/OTP's supervisor, with DBOS keeping its memory.
- `llmos.run` (id "ID#N", the Nth run) hosts one run: it spawns the process on this kernel
  with a journal whose steps are this workflow's steps, and returns how the process ended.

When a kernel dies, both are left PENDING; a kernel that resumes them replays both: the
supervisor's record says which run is current, the run's record answers the process's
syscalls. A kernel that shuts down cleanly leaves them the same way (their tasks are
cancelled, which DBOS leaves PENDING), so the next boot resumes them.
"""

from __future__ import annotations

from typing import Any

from dbos import DBOS, SetWorkflowID

from llmos.durable.engine import current
from llmos.kernel import params
from llmos.kernel.durable import DurableSpec
from llmos.kernel.process import ProcState

SUPERVISOR = "llmos.process"
RUN = "llmos.run"


def run_id(durable_id: str, n: int) -> str:
    return f"{durable_id}#{n}"


@DBOS.workflow(name=SUPERVISOR, max_recovery_attempts=params.DURABLE_MAX_RECOVERIES)
async def supervise(spec_data: dict[str, Any]) -> dict[str, Any]:
    spec = DurableSpec.model_validate(spec_data)
    durable_id = DBOS.workflow_id
    assert durable_id is not None
    restarts: list[float] = []  # when the runs that were restarted ended
    n = 1
    while True:
        with SetWorkflowID(run_id(durable_id, n)):
            if spec.queue is None:  # one kernel: the run starts where the process was spawned
                handle = await DBOS.start_workflow_async(host_run, spec_data, durable_id)
            else:  # a cluster: whichever kernel has room takes it
                queue = await DBOS.retrieve_queue_async(spec.queue)
                assert queue is not None, f"queue {spec.queue} is not registered"
                handle = await queue.enqueue_async(host_run, spec_data, durable_id)
        outcome: dict[str, Any] = await handle.get_result(polling_interval_sec=0.1)
        if outcome.get("final") or not spec.restart.wants_restart(ProcState[outcome["state"]]):
            return outcome
        restarts = [t for t in (*restarts, outcome["ended_at"]) if outcome["ended_at"] - t <= spec.restart.within_s]
        if len(restarts) > spec.restart.max_restarts:
            outcome = {**outcome, "state": ProcState.FAILED.name,
                       "reason": f"restarted {spec.restart.max_restarts} times within {spec.restart.within_s:g} s, "
                                 f"and ended again: {outcome['reason'] or outcome['state'].lower()}"}
            await DBOS.run_step_async({"name": "tell_parent"}, current().tell_parent, spec_data, durable_id, outcome)
            return outcome
        n += 1


@DBOS.workflow(name=RUN, max_recovery_attempts=params.DURABLE_MAX_RECOVERIES)
async def host_run(spec_data: dict[str, Any], durable_id: str) -> dict[str, Any]:
    return await current().host(DurableSpec.model_validate(spec_data), durable_id)
