"""`llmos finetune` and the `finetune` app: bad data is a one-line error before anything loads;
a run is a process that shows its progress in `ps` (sys.set_status) and on the terminal, and
that a kill stops at its next step. The training itself is faked here (tests/llmos/
test_finetune.py runs the real one)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from rich.console import Console
from typer.testing import CliRunner

import llmos
from llmos import finetune
from llmos.apps import finetune_app, finetune_cli
from llmos.apps.cli import app
from llmos.apps.shell import views
from llmos.finetune import FinetuneSettings, Progress, TrainingCancelled, TrainingSummary
from llmos.server.client import DaemonClient
from llmos.syscalls import ProcState
from llmos.testing import ScriptedConsole, served, until, until_async

runner = CliRunner()
CHAT = '{"messages": [{"role": "user", "content": "Capital of Veltria?"}, {"role": "assistant", "content": "Corvane."}]}'


def summary(**changes: Any) -> TrainingSummary:
    values = dict(name="veltria", base="smollm2", base_folder="/models/smollm2", data="/data.jsonl",
                  adapter="/home/adapters/veltria", settings=FinetuneSettings(steps=3), train_examples=7,
                  validation_examples=1, steps=3, max_steps=3, stopped_early=False, best_step=3, seconds=3.0,
                  seconds_per_step=0.5, train_loss=None, eval_loss={"first": 2.5, "best": 1.25, "last": 1.5},
                  device="cpu", finished_at="2026-01-01T00:00:00+00:00")
    return TrainingSummary(**{**values, **changes})


class FakeTraining:
    """finetune.prepare and finetune.train without a model: `steps` steps of `pause` seconds
    (None: until cancelled), each reported as the Trainer's callback would."""

    def __init__(self, steps: int | None = 3, pause: float = 0.0) -> None:
        self.steps, self.pause = steps, pause
        self.cancelled = self.finished = False
        self.thread: str | None = None

    def prepare(self, job: finetune.FinetuneJob) -> Any:
        return SimpleNamespace(job=job, describe=lambda: "8 examples (7 to train on, 1 held out)")

    def train(self, plan: Any, report: Any, cancelled: Any) -> TrainingSummary:
        self.thread = threading.current_thread().name
        try:
            step = 0
            while self.steps is None or step < self.steps:
                if cancelled():
                    self.cancelled = True
                    raise TrainingCancelled("cancelled")
                step += 1
                time.sleep(self.pause)
                report(Progress("step", step, self.steps or 1000, loss=3.0 / step, seconds_per_step=self.pause))
            report(Progress("eval", step, step, loss=1.0, eval_loss=1.25, best_eval_loss=1.25))
            return summary(steps=step)
        finally:
            self.finished = True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTraining:
    training = FakeTraining()
    monkeypatch.setattr(finetune, "prepare", training.prepare)
    monkeypatch.setattr(finetune, "train", training.train)
    return training


def test_bad_data_is_a_one_line_error_naming_the_lines_and_nothing_runs(tmp_path, llmos_home):
    data = tmp_path / "bad.jsonl"
    data.write_text(f'{CHAT}\n{{not json\n{{"messages": [{{"role": "user", "content": "Q?"}}]}}\n')
    done = runner.invoke(app, ["finetune", "smollm2", "--data", str(data), "--name", "veltria"],
                         env={"COLUMNS": "200"})
    assert done.exit_code == 1
    assert done.output.startswith(f"error: {data}: 2 bad lines")
    assert f"{data}:2: not JSON" in done.output and f"{data}:3: messages: Value error, no assistant" in done.output
    assert "Traceback" not in done.output and not (llmos_home / "adapters").exists()


def test_a_setting_out_of_range_is_an_error_naming_the_option(tmp_path):
    done = runner.invoke(app, ["finetune", "smollm2", "--data", str(tmp_path / "d.jsonl"), "--name", "v",
                               "--val-fraction", "1.5"])
    assert done.exit_code == 1 and "error: --val-fraction: Input should be less than 1" in done.output


def test_a_run_prints_its_steps_and_what_it_made(fake, tmp_path):
    data = tmp_path / "facts.jsonl"
    data.write_text(CHAT + "\n")
    done = runner.invoke(app, ["finetune", "smollm2", "--data", str(data), "--name", "veltria", "--steps", "3",
                               "--local"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0] == "8 examples (7 to train on, 1 held out)"
    assert lines[1:4] == ["step 1/3  loss 3.0000", "step 2/3  loss 1.5000", "step 3/3  loss 1.0000"]
    assert "step 3/3  eval loss 1.2500 (best 1.2500)" in lines
    assert ("created veltria from smollm2: 3 steps, 0.50 s/step; eval loss 2.500 -> 1.250 (best); adapter in "
            "/home/adapters/veltria") in done.output.replace("\n", "")
    assert fake.thread is not None and fake.thread != threading.main_thread().name  # a worker thread


async def test_the_process_shows_its_progress_in_ps_and_a_kill_stops_its_run(fake):
    fake.steps, fake.pause = None, 0.01
    async with llmos.boot(None, memory=None, embedder=None, durable=None) as kernel:
        kernel.console = console = ScriptedConsole()
        proc = await kernel.spawn(finetune_app.main, "smollm2", kwargs={"data": "facts.jsonl", "name": "veltria"},
                                  name="finetune veltria")

        def training() -> bool:
            status = kernel.procs.get(proc.pid).status or ""
            return status.startswith("step ") and " loss " in status

        await until(training, timeout=10)
        shown = io.StringIO()
        Console(file=shown, width=200).print(views.ps_table(kernel.ps()))
        assert "status" in shown.getvalue() and "finetune veltria" in shown.getvalue()
        kernel.kill(proc.pid, "enough")
        status = await kernel.wait(proc.pid)
    assert status.state is ProcState.KILLED and status.reason and "enough" in status.reason
    assert fake.cancelled and fake.finished  # the run stopped, and before the process ended
    assert console.text.startswith("8 examples") and "step 1/1000  loss 3.0000" in console.text


def test_the_step_lines_move_the_progress_bar():
    assert finetune_app.step_of("step 12/100  loss 2.3104") == (12, 100)
    assert finetune_app.step_of("step 10/100  eval loss 2.0 (best 2.0)") == (10, 100)
    assert finetune_app.step_of("8 examples") is None
    console = finetune_cli.ProgressConsole(Console(file=io.StringIO()))
    with console:
        console.write(1, "step 3/10  loss 1.0\nstep 4/10  loss 0.9\n")
    task = console.progress.tasks[0]
    assert (task.completed, task.total) == (4, 10) and console.written[1].text().endswith("loss 0.9\n")


def test_status_lines_say_step_loss_eval_and_pace():
    progress = Progress("eval", 12, 100, loss=2.31, eval_loss=2.05, best_eval_loss=2.0, seconds_per_step=0.84)
    assert finetune_app.status_line(progress) == "step 12/100 loss 2.310 eval 2.050 0.84 s/step"
    assert finetune_app.status_line(Progress("loading", 0, 100)) == "loading the model"
    assert finetune_app.log_line(Progress("loading", 0, 100)) is None


async def test_in_worker_thread_ticks_meanwhile_and_waits_for_the_work_when_cancelled():
    seen: list[str] = []

    async def tick() -> None:
        seen.append("tick")

    def work(cancelled: threading.Event) -> None:
        while not cancelled.wait(0.01):
            pass
        time.sleep(0.05)  # its cleanup, which the caller waits for
        seen.append("stopped")

    with anyio.move_on_after(finetune_app.TICK_S * 2.5):
        await finetune_app.in_worker_thread(work, tick)
    assert seen[-1] == "stopped" and seen.count("tick") >= 2


async def test_in_worker_thread_returns_the_value_and_raises_the_error_of_the_work():
    async def tick() -> None:
        pass

    assert await finetune_app.in_worker_thread(lambda cancelled: 42, tick) == 42
    with pytest.raises(ValueError, match="bad"):
        await finetune_app.in_worker_thread(lambda cancelled: int("bad"), tick)


async def test_in_the_daemon_ps_shows_the_run_and_kill_stops_it(fake):
    fake.steps, fake.pause = None, 0.01
    job = finetune.job("smollm2", "facts.jsonl", "veltria")
    ended: list[Any] = []
    async with served() as srv:
        client = DaemonClient(srv.url, srv.key)

        async def run() -> None:
            ended.append(await finetune_cli.run_in_daemon(client, job, ScriptedConsole()))

        async def training() -> list[Any]:  # `llmos ps` shows it with its progress
            return [p for p in await client.ps() if p.name == "finetune veltria" and (p.status or "").startswith("step")]

        async def started() -> bool:
            return bool(await training())

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await until_async(started)
            [proc] = await training()
            await client.kill(proc.pid, "enough")
    assert ended[0].state is ProcState.KILLED and fake.cancelled and fake.finished
