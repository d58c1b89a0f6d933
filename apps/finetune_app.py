"""The `finetune` app: one LoRA fine-tuning run (llmos.finetune) as a process.

    llmos finetune smollm2 --data facts.jsonl --name facts      (apps/finetune_cli.py)
    llmos run finetune smollm2 --data facts.jsonl --name facts --steps 100

The training runs in a worker thread: the event loop goes on serving every other process,
and the drivers' compute thread stays the model engine's. The process says how far it got
with `set_status` (a column of `ps` and `top`) and writes a line a step ("step 12/100 loss
2.3104"); killing it stops the training before its next step, and nothing is registered.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from llmos import finetune
from llmos.finetune import Progress

T = TypeVar("T")
APP = "llmos.apps.finetune_app:main"  # how the CLI spawns it, in this kernel or the daemon's
STEP_LINE = re.compile(r"^step (\d+)/(\d+)\b")
TICK_S = 0.25  # how often the process shows what the training thread reported


async def main(sys: Any, base: str, *, data: str, name: str, force: bool = False, **settings: Any) -> str:
    """Fine-tune BASE on --data (JSONL) into the new model --name; settings as `llmos finetune`'s
    options (--steps, --epochs, --lr, --rank, --alpha, --seed, --val-fraction, --patience,
    --batch-size, --max-length, --eval-every). Returns what it did, in one line."""
    job = finetune.job(base, data, name, force=force, **settings)
    await sys.set_status("checking the data")
    plan = await anyio.to_thread.run_sync(finetune.prepare, job)  # reads files, loads a tokenizer
    await sys.write(plan.describe() + "\n")
    shown = Shown(sys)
    summary = await in_worker_thread(lambda cancelled: finetune.train(plan, shown.report, cancelled.is_set),
                                     shown.forward)
    await sys.set_status(f"done: {summary.steps} steps")
    return outcome(summary)


async def in_worker_thread(work: Callable[[threading.Event], T], tick: Callable[[], Awaitable[None]]) -> T:
    """`work(cancelled)` in a worker thread, and `tick()` on the event loop every TICK_S until it
    returns (and once after). When the caller is cancelled (its process killed), `cancelled`
    is set and the caller still waits for `work` to return (at its next check): the process
    ends only once nothing of its run goes on behind it."""
    cancelled = threading.Event()

    def run() -> tuple[T | None, Exception | None]:
        try:
            return work(cancelled), None
        except Exception as exc:  # raised below, not inside the task group (which would wrap it in a group)
            return None, exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(_tick_until_cancelled, tick, cancelled)
        value, error = await anyio.to_thread.run_sync(run)  # shielded: it returns when `work` does
        tg.cancel_scope.cancel()
    await anyio.lowlevel.checkpoint_if_cancelled()  # killed meanwhile: the process ends KILLED, whatever `work` did
    await tick()
    if error is not None:
        raise error
    return value  # type: ignore[return-value]


async def _tick_until_cancelled(tick: Callable[[], Awaitable[None]], cancelled: threading.Event) -> None:
    try:
        while True:
            await anyio.sleep(TICK_S)
            await tick()
    finally:  # a kill of the process, or the work is done: either way it stops (or has stopped)
        cancelled.set()


class Shown:
    """A run's progress, reported from the training thread (which never waits for the event
    loop), shown by the process: its status line and a line of output a step."""

    def __init__(self, sys: Any) -> None:
        self.sys = sys
        self.reports: queue.SimpleQueue[Progress] = queue.SimpleQueue()

    def report(self, progress: Progress) -> None:
        self.reports.put(progress)

    async def forward(self) -> None:
        """What was reported since the last call: the last report's status, every line."""
        latest, lines = None, []
        while not self.reports.empty():
            latest = self.reports.get()
            line = log_line(latest)
            if line is not None:
                lines.append(line + "\n")
        if lines:
            await self.sys.write("".join(lines))
        if latest is not None:
            await self.sys.set_status(status_line(latest))


def status_line(progress: Progress) -> str:
    """What `ps` and `top` show: "step 12/100 loss 2.310 eval 2.051 0.84 s/step"."""
    if progress.kind == "loading":
        return "loading the model"
    if progress.kind == "saving":
        return f"saving the adapter (step {progress.step}/{progress.total})"
    figures = [f"step {progress.step}/{progress.total}"]
    if progress.loss is not None:
        figures.append(f"loss {progress.loss:.3f}")
    if progress.eval_loss is not None:
        figures.append(f"eval {progress.eval_loss:.3f}")
    if progress.seconds_per_step is not None:
        figures.append(f"{progress.seconds_per_step:.2f} s/step")
    return " ".join(figures)


def log_line(progress: Progress) -> str | None:
    """The line written for a step or an eval (None for the other reports)."""
    where = f"step {progress.step}/{progress.total}"
    if progress.kind == "step" and progress.loss is not None:
        return f"{where}  loss {progress.loss:.4f}"
    if progress.kind == "eval" and progress.eval_loss is not None:
        return f"{where}  eval loss {progress.eval_loss:.4f} (best {progress.best_eval_loss:.4f})"
    return None


def step_of(line: str) -> tuple[int, int] | None:
    """(step, total) of a line `log_line` wrote; None for any other line."""
    found = STEP_LINE.match(line)
    return (int(found[1]), int(found[2])) if found else None


def outcome(summary: finetune.TrainingSummary) -> str:
    losses = ""
    if summary.eval_loss is not None:
        losses = f"; eval loss {summary.eval_loss.first:.3f} -> {summary.eval_loss.best:.3f} (best)"
    elif summary.train_loss is not None:
        losses = f"; training loss {summary.train_loss.first:.3f} -> {summary.train_loss.last:.3f}"
    early = " (stopped early)" if summary.stopped_early else ""
    return (f"created {summary.name} from {summary.base}: {summary.steps} steps{early}, "
            f"{summary.seconds_per_step:.2f} s/step{losses}; adapter in {summary.adapter}")
