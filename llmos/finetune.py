"""`llmos finetune`: a LoRA adapter for a local base model, trained with peft and transformers'
Trainer on a JSONL file (llmos.finetune_data), saved to LLMOS_HOME/adapters/NAME and registered
in the library as a derived model of the base (llmos.library.create).

Two steps, so that everything that can be checked is checked before a model loads:
`prepare` (the name is free, the base has a local folder, the data is good: tokenizer only)
and `train` (blocking, in a worker thread: never on the event loop nor the drivers' compute
thread). `train` reports its progress through a callback and stops at the next step once
`cancelled()` says so; the adapter is written to a temporary folder and renamed into place
only when complete, and registered last, so a cancelled or failed run leaves nothing behind.
torch, transformers and peft are imported inside functions: `import llmos` stays light.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmos import finetune_data, library
from llmos.drivers.weights import quiet_hf_progress
from llmos.finetune_data import Encoded
from llmos.home import llmos_home
from llmos.kernel.errors import ConfigError

ADAPTERS = "adapters"  # LLMOS_HOME/adapters/NAME: one adapter folder per fine-tuned model
SUMMARY_FILE = "training_summary.json"
DEFAULT_EPOCHS = 3.0  # when neither --steps nor --epochs is given
# The attention and MLP projections of Llama-shaped models (SmolLM2's): LoRA on all of them
# learns facts faster than on attention alone. A model without them gets peft's defaults.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_DROPOUT = 0.05
EVALS_PER_RUN = 10  # without --eval-every, the eval loss is measured about this often in a run
MAX_EVAL_EVERY = 200


class FinetuneSettings(BaseModel):
    """The command line's training settings (llmos finetune --help says what each does)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int | None = Field(default=None, ge=1)
    epochs: float | None = Field(default=None, gt=0)
    lr: float = Field(default=2e-4, gt=0, lt=1)
    rank: int = Field(default=8, ge=1, le=1024)
    alpha: float = Field(default=16, gt=0)
    seed: int = Field(default=0, ge=0)
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    patience: int = Field(default=3, ge=1)
    batch_size: int = Field(default=4, ge=1)
    max_length: int = Field(default=512, ge=8)
    eval_every: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> FinetuneSettings:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        return self


class FinetuneJob(BaseModel):
    """One run, as asked: train `name` from `base` on `data`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str = Field(min_length=1)
    data: Path
    name: str = Field(min_length=1)
    settings: FinetuneSettings = Field(default_factory=FinetuneSettings)
    force: bool = False  # replace a derived model (and its adapter folder) already called `name`


def job(base: str, data: str | Path, name: str, *, force: bool = False, **settings: Any) -> FinetuneJob:
    """The run asked for with these values (strings from a command line are converted);
    ConfigError naming the option for one out of range or unknown."""
    try:
        return FinetuneJob(base=base, data=Path(data).expanduser().resolve(), name=name, force=force,
                           settings=FinetuneSettings.model_validate(settings))
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "--" + "-".join(str(part).replace("_", "-") for part in first["loc"] if part != "settings")
        raise ConfigError(f"{option if first['loc'] else 'settings'}: {first['msg']}") from None


# -- preparing: everything but the model -----------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    job: FinetuneJob
    base: str  # the base's name as the library knows it (a registered name, not an alias)
    folder: Path  # the base's Hugging Face folder
    tokenizer: Any
    train: list[Encoded]
    validation: list[Encoded]
    total_steps: int
    eval_every: int
    target: Path  # LLMOS_HOME/adapters/NAME

    def describe(self) -> str:
        held = f", {len(self.validation)} held out for the eval loss" if self.validation else ", none held out"
        return (f"{len(self.train) + len(self.validation)} examples ({len(self.train)} to train on{held}); "
                f"{self.total_steps} steps of {self.job.settings.batch_size}; base {self.base} ({self.folder})")


def adapters_folder(home: Path | None = None) -> Path:
    return (home or llmos_home()) / ADAPTERS


def prepare(job: FinetuneJob) -> Plan:
    """Check the run before any model loads: the new name is free (or --force may replace a
    derived model), the base is a local model with a folder, and the data is good (the
    tokenizer counts its tokens). ConfigError (FinetuneDataError for the data) otherwise."""
    library.check_new_name(job.name, replace=job.force)
    target = adapters_folder() / job.name
    if target.exists() and not job.force:
        raise ConfigError(f"{target} exists (an earlier run's, or a removed model's adapter): --force replaces it")
    folder = library.local_folder(job.base)  # NoLocalFolder for a remote or derived model, UnknownModel
    base = _library_name(job.base)
    tokenizer = load_tokenizer(folder)
    examples = finetune_data.load_examples(job.data, tokenizer, job.settings.max_length)
    train, validation = finetune_data.split(examples, job.settings.val_fraction, job.settings.seed)
    total = total_steps(job.settings, len(train))
    every = job.settings.eval_every or max(1, min(MAX_EVAL_EVERY, total // EVALS_PER_RUN))
    return Plan(job, base, folder, tokenizer, train, validation, total, every, target)


def _library_name(base: str) -> str:
    """The name the new model records as its base: a registered model's own name for any of
    its aliases, a library model's as the library spells it. A folder has none."""
    spec = library.builtin(base)
    if spec is not None:
        return spec.name
    found = library.read_library().find(base)
    if found is None:
        raise ConfigError(f"{base} is a folder: import it first (`llmos models import {base}`) and fine-tune it by "
                          "its name, so that the new model can name its base")
    return found[0]


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer  # transformers (and torch, which it imports) load here

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:  # batches are padded; the padding's labels are IGNORE anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def total_steps(settings: FinetuneSettings, train_examples: int) -> int:
    """The optimizer steps of a run, as the Trainer counts them (one batch a step)."""
    if settings.steps is not None:
        return settings.steps
    per_epoch = math.ceil(train_examples / settings.batch_size)
    return max(1, math.ceil((settings.epochs or DEFAULT_EPOCHS) * per_epoch))


# -- training ----------------------------------------------------------------------------------------------
class TrainingCancelled(Exception):
    """The run was cancelled (its process killed): nothing was saved or registered."""


@dataclass(frozen=True)
class Progress:
    """What a run reports as it goes: `kind` says which of the figures are new."""

    kind: Literal["loading", "step", "eval", "saving"]
    step: int
    total: int
    loss: float | None = None  # the last step's training loss
    eval_loss: float | None = None  # the last eval loss (held-out examples)
    best_eval_loss: float | None = None
    seconds_per_step: float | None = None  # mean of the steps so far (evaluations not counted)


class Losses(BaseModel):
    first: float
    best: float
    last: float

    @classmethod
    def of(cls, values: list[float]) -> Losses | None:
        return cls(first=values[0], best=min(values), last=values[-1]) if values else None


class TrainingSummary(BaseModel):
    """training_summary.json, beside the adapter."""

    name: str
    base: str
    base_folder: str
    data: str
    adapter: str
    settings: FinetuneSettings
    train_examples: int
    validation_examples: int
    steps: int  # taken: fewer than max_steps when early stopping ended the run
    max_steps: int
    stopped_early: bool
    best_step: int | None  # the eval step whose adapter was kept (load_best_model_at_end); None: the last
    seconds: float
    seconds_per_step: float
    train_loss: Losses | None
    eval_loss: Losses | None  # the first is before any training (eval_on_start)
    device: str
    finished_at: str


Report = Callable[[Progress], None]


def train(plan: Plan, report: Report = lambda progress: None,
          cancelled: Callable[[], bool] = lambda: False) -> TrainingSummary:
    """Train the adapter, save it and register the new model. Blocking (minutes): run it in a
    worker thread. TrainingCancelled once `cancelled()` is true (checked before every step)."""
    adapters = plan.target.parent
    adapters.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=adapters, prefix=f".{plan.job.name}-"))  # the same disk: renames are atomic
    try:
        started = time.perf_counter()
        report(Progress("loading", 0, plan.total_steps))
        watch = _watch(plan, report, cancelled)
        trainer = _trainer(plan, work / "checkpoints", watch)
        _stop_if(cancelled)
        trainer.train()
        _stop_if(cancelled)
        report(Progress("saving", trainer.state.global_step, trainer.state.max_steps))
        staged = work / "adapter"
        trainer.model.save_pretrained(str(staged))
        summary = _summary(plan, trainer, watch.step_seconds, time.perf_counter() - started)
        (staged / SUMMARY_FILE).write_text(summary.model_dump_json(indent=2) + "\n")
        _stop_if(cancelled)  # the last moment a cancellation is honoured: what follows is quick
        _install(plan, staged, work)
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stop_if(cancelled: Callable[[], bool]) -> None:
    if cancelled():
        raise TrainingCancelled("the fine-tuning run was cancelled; nothing was saved")


def _trainer(plan: Plan, output: Path, watch: Any) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, DataCollatorForSeq2Seq, EarlyStoppingCallback, PrinterCallback,
                              Trainer, TrainingArguments, set_seed)

    settings = plan.job.settings
    # peft asks transformers for a name it has deprecated, at every run: noise, not news.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    set_seed(settings.seed)  # the LoRA factors' initialisation, the batches' order, dropout
    # float32 whatever the folder holds: training in bfloat16 on a CPU loses the small updates.
    with quiet_hf_progress():  # its bar would go to the daemon's log, or under ours
        model = AutoModelForCausalLM.from_pretrained(plan.folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=LORA_DROPOUT,
                                             target_modules=_targets(model), task_type="CAUSAL_LM"))
    evaluating = bool(plan.validation)
    trainer = Trainer(
        model=model, args=_arguments(TrainingArguments, plan, output, evaluating, torch.cuda.is_available()),
        train_dataset=[example.features() for example in plan.train],
        eval_dataset=[example.features() for example in plan.validation] if evaluating else None,
        data_collator=DataCollatorForSeq2Seq(plan.tokenizer, label_pad_token_id=finetune_data.IGNORE, padding=True),
        callbacks=[watch, *([EarlyStoppingCallback(early_stopping_patience=settings.patience)] if evaluating else [])])
    trainer.remove_callback(PrinterCallback)  # it prints every log to stdout: the daemon's, the terminal's
    return trainer


def _targets(model: Any) -> list[str] | None:
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [target for target in LORA_TARGETS if target in present] or None


def _arguments(arguments: Any, plan: Plan, output: Path, evaluating: bool, pinned: bool) -> Any:
    """TrainingArguments; `pinned`: page-locked batches, for a GPU only (a CPU has no use for them)."""
    settings = plan.job.settings
    every = {"eval_strategy": "steps", "eval_steps": plan.eval_every, "eval_on_start": True,
             # early stopping keeps the best adapter: a checkpoint at each eval (adapters are small)
             "save_strategy": "steps", "save_steps": plan.eval_every, "save_total_limit": 1,
             "load_best_model_at_end": True, "metric_for_best_model": "eval_loss", "greater_is_better": False}
    return arguments(
        output_dir=str(output), max_steps=plan.total_steps, learning_rate=settings.lr, seed=settings.seed,
        data_seed=settings.seed, per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size, logging_steps=1, save_only_model=True,
        report_to="none", disable_tqdm=True, dataloader_pin_memory=pinned,
        **(every if evaluating else {"eval_strategy": "no", "save_strategy": "no"}))


def _watch(plan: Plan, report: Report, cancelled: Callable[[], bool]) -> Any:
    """The Trainer callback that reports each step and eval and stops a cancelled run before
    its next step (raising out of trainer.train(): nothing after it runs)."""
    from transformers import TrainerCallback

    class Watch(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.step_seconds: list[float] = []
            self.began = 0.0
            self.eval_losses: list[float] = []
            self.loss: float | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _stop_if(cancelled)
            self.began = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_seconds.append(time.perf_counter() - self.began)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])
                report(self._progress("step", state))

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kwargs: Any) -> None:
            if metrics and "eval_loss" in metrics:
                self.eval_losses.append(float(metrics["eval_loss"]))
                report(self._progress("eval", state))
            _stop_if(cancelled)

        def _progress(self, kind: Literal["step", "eval"], state: Any) -> Progress:
            mean = sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else None
            return Progress(kind, state.global_step, state.max_steps or plan.total_steps, loss=self.loss,
                            eval_loss=self.eval_losses[-1] if self.eval_losses else None,
                            best_eval_loss=min(self.eval_losses) if self.eval_losses else None,
                            seconds_per_step=mean)

    return Watch()


def _summary(plan: Plan, trainer: Any, step_seconds: list[float], seconds: float) -> TrainingSummary:
    history = trainer.state.log_history
    best = trainer.state.best_model_checkpoint
    return TrainingSummary(
        name=plan.job.name, base=plan.base, base_folder=str(plan.folder), data=str(plan.job.data),
        adapter=str(plan.target), settings=plan.job.settings, train_examples=len(plan.train),
        validation_examples=len(plan.validation), steps=trainer.state.global_step, max_steps=trainer.state.max_steps,
        stopped_early=trainer.state.global_step < trainer.state.max_steps,
        best_step=int(best.rsplit("-", 1)[-1]) if best else None, seconds=round(seconds, 2),
        seconds_per_step=round(sum(step_seconds) / max(1, len(step_seconds)), 4),
        train_loss=Losses.of([entry["loss"] for entry in history if "loss" in entry]),
        eval_loss=Losses.of([entry["eval_loss"] for entry in history if "eval_loss" in entry]),
        device=str(trainer.args.device), finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _install(plan: Plan, staged: Path, work: Path) -> None:
    """The complete adapter folder renamed into place, then registered; a failure to register
    puts back what was there (with --force, the adapter it replaces)."""
    replaced = work / "replaced"
    if plan.target.exists():  # only with --force: prepare refused it otherwise
        os.replace(plan.target, replaced)
    os.replace(staged, plan.target)
    try:
        library.create(plan.job.name, plan.base, adapter=plan.target, replace=plan.job.force)
    except BaseException:
        shutil.rmtree(plan.target, ignore_errors=True)
        if replaced.exists():
            os.replace(replaced, plan.target)
        raise


def read_summary(folder: Path) -> TrainingSummary:
    return TrainingSummary.model_validate(json.loads((folder / SUMMARY_FILE).read_text()))
