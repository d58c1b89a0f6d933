"""`llmos eval`: perplexity, QA and tool-choice figures for one model or several side by
side, printed as tables and written as JSON. The work is llmos.evaluation's."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from llmos import eval_data, evaluation
from llmos.apps import runner
from llmos.evaluation import EvalPlan, EvalReport, ModelReport
from llmos.home import llmos_home


def plan(*, perplexity: Path | None, qa: Path | None, tools: Path | None, limit: int | None,
         max_tokens: int | None, compare_loop: bool) -> tuple[EvalPlan, dict[str, str]]:
    """The files read and checked (before any model loads; none at all is a ConfigError), and
    which file each eval reads."""
    tokens = {} if max_tokens is None else {"qa_tokens": max_tokens, "tool_tokens": max_tokens}
    chosen = EvalPlan(
        windows=eval_data.read_windows(perplexity, limit) if perplexity else None,
        qa=eval_data.read_qa(qa, limit) if qa else None,
        tools=eval_data.read_tool_prompts(tools, evaluation.registered_tools(), limit) if tools else None,
        compare_loop=compare_loop, **tokens)
    inputs = {name: str(path) for name, path in (("perplexity", perplexity), ("qa", qa), ("tools", tools)) if path}
    return chosen, inputs


def run(models: list[str], chosen: EvalPlan, inputs: dict[str, str]) -> EvalReport:
    """Each model in turn, saying which on stderr as it loads."""
    return anyio.run(lambda: evaluation.evaluate(models, chosen, inputs=inputs,
                                                 on_model=lambda name: runner.note(f"evaluating {name} ...")))


def default_output() -> Path:
    return llmos_home() / "evals" / f"eval-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"


def write(report: EvalReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -- tables: one per eval, one column per model ----------------------------------------------------------
def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _number(spec: str) -> Callable[[float | None], str]:
    return lambda x: "-" if x is None else format(x, spec)


# eval -> its rows: (label, the result's field, how to show its value)
METRICS: dict[str, list[tuple[str, str, Callable[[Any], str]]]] = {
    "perplexity": [("perplexity", "perplexity", _number(".2f")), ("mean NLL", "mean_nll", _number(".3f")),
                   ("tokens scored", "tokens", str), ("windows", "windows", str),
                   ("tokens/s", "tokens_per_s", _number(".1f"))],
    "qa": [("questions", "n", str), ("exact match", "exact_match", _ratio), ("contains answer", "contains", _ratio),
           ("errors", "errors", str)],
    "tools": [("prompts", "n", str), ("tool-choice accuracy", "accuracy", _ratio),
              ("parse rate", "parse_rate", _ratio), ("tool calls", "calls", str),
              ("none recall", "none_recall", _ratio), ("errors", "errors", str)],
}


def tables(report: EvalReport) -> list[Table]:
    return [_table(name, report.models) for name in evaluation.EVALS
            if any(getattr(m, name) is not None for m in report.models)]


def _table(name: str, models: list[ModelReport]) -> Table:
    table = Table("", *(m.model for m in models), title=name)
    results = [getattr(m, name) for m in models]
    for label, field, fmt in METRICS[name]:
        table.add_row(label, *(fmt(getattr(r, field)) if r is not None else "-" for r in results))
    table.add_row("examples/s (kernel)", *(f"{r.examples_per_s:.2f}" if r else "-" for r in results))
    if any(m.sequential_examples_per_s for m in models):
        loops = [(m.sequential_examples_per_s or {}).get(name) for m in models]
        table.add_row("examples/s (sequential loop)", *(_number(".2f")(x) for x in loops))
        table.add_row("kernel / loop", *(f"{r.examples_per_s / x:.2f}x" if r and x else "-"
                                         for r, x in zip(results, loops)))
    return table


def show(report: EvalReport, path: Path, console: Console) -> None:
    for table in tables(report):
        console.print(table)
    console.print(f"results, with every item's: {path}", markup=False, highlight=False)
