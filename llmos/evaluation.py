"""`llmos eval`'s work: perplexity, question answering and tool choice, measured through a
booted kernel, for one model or several in turn.

Every item (a window of text, a question, a tool prompt) runs as its own process, at most
`concurrency` at once, so the engine batches them as it batches any agents; the same items
one after another (`concurrency=1`) give the plain loop's rate to compare with. The inputs
and the scoring of answers are llmos.eval_data's.

    plan = EvalPlan(qa=read_qa(Path("examples/eval/qa.jsonl")))
    report = await evaluate(["smollm2"], plan)
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple, TypeVar

import anyio
import jsonschema
from pydantic import BaseModel

import llmos
from llmos import plugins
from llmos.drivers.tools import REGISTERED
from llmos.eval_data import NO_TOOL, QAItem, ToolPrompt, Window, contains_answer, exact_match, share
from llmos.kernel.errors import ConfigError, InvalidRequest, ModelError, SyscallError
from llmos.kernel.generation import GenerationService
from llmos.kernel.kernel import Kernel
from llmos.kernel.model import ModelDriver
from llmos.syscalls import Sys
from llmos.syscalls.choose import likelihood

# Items in flight at once: enough for the engine to fill its batches, few enough that a
# long file never queues thousands of generations.
CONCURRENCY = 16
QA_TOKENS = 32  # a QA reply's tokens: a short factual answer, and its sentence
TOOL_TOKENS = 64  # a tool turn's: the arguments' JSON (or the answer when no tool is chosen)
MODEL = "model.generate"
EVALS = ("perplexity", "qa", "tools")

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


# -- results -------------------------------------------------------------------------------------------
class PerplexityResult(BaseModel):
    perplexity: float  # exp(mean negative log-likelihood per scored token)
    mean_nll: float
    tokens: int  # tokens scored (each window's first word is context, not scored)
    windows: int
    seconds: float
    tokens_per_s: float
    examples_per_s: float  # windows a second


class QAItemResult(BaseModel):
    line: int
    question: str
    answers: tuple[str, ...]
    reply: str
    exact_match: bool
    contains: bool
    error: str | None = None


class QAResult(BaseModel):
    n: int
    exact_match: float
    contains: float
    errors: int
    seconds: float
    examples_per_s: float
    items: list[QAItemResult]


class ToolItemResult(BaseModel):
    line: int
    prompt: str
    expected: str
    picked: str | None  # the tool called, "none" for an answer, None when unknown (cut short, failed)
    called: bool  # the model asked for a tool
    parsed: bool  # ...and its arguments parsed and fit the tool's schema
    arguments: dict[str, Any] | None = None
    correct: bool
    error: str | None = None


class ToolsResult(BaseModel):
    n: int
    accuracy: float  # the right tool, or rightly none
    parse_rate: float | None  # of the calls asked for, those whose arguments parsed and validated
    calls: int
    none_recall: float | None  # of the prompts labelled none, the share answered without a tool
    errors: int
    seconds: float
    examples_per_s: float
    tools: tuple[str, ...]  # what was offered
    items: list[ToolItemResult]


class ModelReport(BaseModel):
    model: str
    perplexity: PerplexityResult | None = None
    qa: QAResult | None = None
    tools: ToolsResult | None = None
    # With a loop comparison: each eval's examples a second run one after another.
    sequential_examples_per_s: dict[str, float] | None = None


class EvalReport(BaseModel):
    created: str
    concurrency: int
    qa_tokens: int
    tool_tokens: int
    inputs: dict[str, str]  # eval -> the file it read
    models: list[ModelReport]


@dataclass(frozen=True)
class EvalPlan:
    """What to evaluate: any of the three inputs (None: that eval is left out)."""

    windows: Sequence[Window] | None = None
    qa: Sequence[QAItem] | None = None
    tools: Sequence[ToolPrompt] | None = None
    qa_tokens: int = QA_TOKENS
    tool_tokens: int = TOOL_TOKENS
    concurrency: int = CONCURRENCY
    compare_loop: bool = False  # also run each eval's items one after another

    def __post_init__(self) -> None:
        if self.windows is None and self.qa is None and self.tools is None:
            raise ConfigError("nothing to evaluate: give a text for perplexity (--perplexity FILE), questions "
                              "(--qa FILE) or tool prompts (--tools FILE)")
        if self.concurrency < 1 or self.qa_tokens < 1 or self.tool_tokens < 1:
            raise ConfigError("concurrency and token limits must be at least 1")


# -- running items as processes ---------------------------------------------------------------------------
class Failed(NamedTuple):
    """An item whose process did not exit (killed, or a bug): why."""

    reason: str


async def run_each(kernel: Kernel, work: Callable[[Sys, ItemT], Awaitable[ResultT]], items: Sequence[ItemT], *,
                   concurrency: int, caps: frozenset[str], name: str) -> tuple[list[ResultT | Failed], float]:
    """`work(sys, item)` for every item, each its own process, at most `concurrency` at once:
    the results in the items' order, and the seconds it all took."""
    limiter = anyio.CapacityLimiter(concurrency)
    results: list[ResultT | Failed] = [Failed("not run")] * len(items)

    async def one(index: int, item: ItemT) -> None:
        async with limiter:
            proc = await kernel.spawn(work, item, name=name, caps=caps)
            status = await kernel.wait(proc.pid)
        results[index] = status.result if status.ok else Failed(f"{status.state.name}: {status.reason}")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index, item in enumerate(items):
            tg.start_soon(one, index, item)
    return results, time.perf_counter() - started


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


# -- perplexity ------------------------------------------------------------------------------------------
class _Scored(NamedTuple):
    logprob: float  # the continuation's total log-probability
    tokens: int


def scoring_service(kernel: Kernel) -> GenerationService:
    """The kernel's generation service, if its model can score text."""
    service = kernel.generation
    if service is None:
        raise ModelError("this kernel has no model to evaluate")
    if not getattr(service.driver, "can_score", True):
        raise ConfigError(f"{service.driver.name} cannot score text (a remote server gives no log-probabilities); "
                          "perplexity needs a local model")
    return service


async def perplexity(kernel: Kernel, windows: Sequence[Window], *, concurrency: int = CONCURRENCY) -> PerplexityResult:
    """Perplexity of the windows' text: each window's continuation scored, token by token,
    after its first word, by the engine that scores `choose`'s options.

    No syscall hands a process a text's token log-probabilities (`choose` gives an option's
    total after a chat prompt of its own), so each window's process submits the scoring job
    itself, on its own behalf, as `choose` does (syscalls.choose.likelihood): a raw prompt (the window's
    first word) and one option (the rest). The job is scheduled, batched and accounted as the
    process's like any generation."""
    service = scoring_service(kernel)

    async def score(sys: Sys, window: Window) -> _Scored:
        judged = await likelihood(service, kernel.procs.get_live(sys.pid), None, (window.continuation,),
                                  prompt=window.context)
        return _Scored(judged.logprobs[0], judged.tokens[0])

    outcomes, seconds = await run_each(kernel, score, windows, concurrency=concurrency, caps=frozenset({MODEL}),
                                       name="eval-perplexity")
    failed = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, Failed)]
    if failed:  # a perplexity over part of the text would not be the text's
        index, outcome = failed[0]
        raise ModelError(f"scoring window {index + 1} of {len(windows)} failed: {outcome.reason}")
    scored = [o for o in outcomes if isinstance(o, _Scored)]
    tokens = sum(s.tokens for s in scored)
    nll = -sum(s.logprob for s in scored) / tokens
    return PerplexityResult(perplexity=math.exp(nll), mean_nll=nll, tokens=tokens, windows=len(scored),
                            seconds=seconds, tokens_per_s=_rate(tokens, seconds),
                            examples_per_s=_rate(len(scored), seconds))


# -- question answering -------------------------------------------------------------------------------------
async def qa(kernel: Kernel, items: Sequence[QAItem], *, max_tokens: int = QA_TOKENS,
             concurrency: int = CONCURRENCY) -> QAResult:
    """Each question asked alone (a stateless chat, greedy), its reply scored against the answers."""
    async def answer(sys: Sys, item: QAItem) -> QAItemResult:
        try:
            reply = await sys.chat(messages=[{"role": "user", "content": item.question}], max_tokens=max_tokens,
                                   temperature=0.0)
        except SyscallError as exc:
            return _qa_failed(item, str(exc))
        return QAItemResult(line=item.line, question=item.question, answers=item.answers, reply=reply.text,
                            exact_match=exact_match(reply.text, item.answers),
                            contains=contains_answer(reply.text, item.answers))

    outcomes, seconds = await run_each(kernel, answer, items, concurrency=concurrency, caps=frozenset({MODEL}),
                                       name="eval-qa")
    results = [_qa_failed(item, o.reason) if isinstance(o, Failed) else o for item, o in zip(items, outcomes)]
    return QAResult(n=len(results), exact_match=share(r.exact_match for r in results) or 0.0,
                    contains=share(r.contains for r in results) or 0.0,
                    errors=sum(r.error is not None for r in results), seconds=seconds,
                    examples_per_s=_rate(len(results), seconds), items=results)


def _qa_failed(item: QAItem, error: str) -> QAItemResult:
    return QAItemResult(line=item.line, question=item.question, answers=item.answers, reply="", exact_match=False,
                        contains=False, error=error)


# -- tool choice ---------------------------------------------------------------------------------------------
def registered_tools() -> list[str]:
    """The tools a kernel booted here offers (built in, and the installed plugins'), by name."""
    plugins.load()
    return sorted(REGISTERED)


async def tools(kernel: Kernel, items: Sequence[ToolPrompt], *, max_tokens: int = TOOL_TOKENS,
                concurrency: int = CONCURRENCY) -> ToolsResult:
    """Each prompt in a stateless `chat(tools=[every tool])`, as an agent asks it: which tool
    the model calls (or none), and whether the arguments it gives fit the tool.

    Nothing runs: `chat(tools=...)` only hands the model's call back in `reply.tool_calls`
    (running it would be the caller's `call_tool`, which this never makes), so write_file
    and run_python are offered, chosen and argued for, and never executed. Offering a tool
    needs its capability, hence "tool.*"."""
    if kernel.tools is None:
        raise ConfigError("this kernel has no tools to offer")
    specs = {spec.name: spec for spec in kernel.tools.specs()}
    offered = tuple(specs)

    async def choose(sys: Sys, item: ToolPrompt) -> ToolItemResult:
        try:
            reply = await sys.chat(messages=[{"role": "user", "content": item.prompt}], tools=list(offered),
                                   max_tokens=max_tokens)
        except InvalidRequest as exc:  # the arguments' turn was cut short: a call that did not parse
            return _tool_outcome(item, picked=None, called=True, parsed=False, error=str(exc))
        except SyscallError as exc:
            return _tool_outcome(item, picked=None, called=False, parsed=False, error=str(exc))
        if not reply.tool_calls:
            return _tool_outcome(item, picked=NO_TOOL, called=False, parsed=False)
        call = reply.tool_calls[0]
        fits = jsonschema.Draft202012Validator(specs[call.name].parameters).is_valid(call.arguments)
        return _tool_outcome(item, picked=call.name, called=True, parsed=fits, arguments=call.arguments)

    outcomes, seconds = await run_each(kernel, choose, items, concurrency=concurrency,
                                       caps=frozenset({MODEL, "tool.*"}), name="eval-tools")
    results = [_tool_outcome(item, picked=None, called=False, parsed=False, error=o.reason)
               if isinstance(o, Failed) else o for item, o in zip(items, outcomes)]
    called = [r for r in results if r.called]
    return ToolsResult(n=len(results), accuracy=share(r.correct for r in results) or 0.0,
                       parse_rate=share(r.parsed for r in called), calls=len(called),
                       none_recall=share(r.picked == NO_TOOL for r in results if r.expected == NO_TOOL),
                       errors=sum(r.error is not None for r in results), seconds=seconds,
                       examples_per_s=_rate(len(results), seconds), tools=offered, items=results)


def _tool_outcome(item: ToolPrompt, *, picked: str | None, called: bool, parsed: bool,
                  arguments: dict[str, Any] | None = None, error: str | None = None) -> ToolItemResult:
    return ToolItemResult(line=item.line, prompt=item.prompt, expected=item.tool, picked=picked, called=called,
                          parsed=parsed, arguments=arguments, correct=picked == item.tool, error=error)


# -- a model, several models ---------------------------------------------------------------------------------
async def evaluate_kernel(kernel: Kernel, plan: EvalPlan) -> ModelReport:
    """Every eval of `plan` on a booted kernel's model. Each eval first runs its first item
    once, untimed (first-call costs: kernel setup, grammar compilation), so the rates
    compare; with `plan.compare_loop`, it runs its items again one after another."""
    assert kernel.generation is not None, "evaluate a kernel booted with a model"
    runs: dict[str, tuple[Callable[..., Awaitable[Any]], Sequence[Any] | None]] = {
        "perplexity": (perplexity, plan.windows),
        "qa": (lambda k, items, concurrency: qa(k, items, max_tokens=plan.qa_tokens, concurrency=concurrency), plan.qa),
        "tools": (lambda k, items, concurrency: tools(k, items, max_tokens=plan.tool_tokens, concurrency=concurrency),
                  plan.tools),
    }
    report = ModelReport(model=kernel.generation.driver.name)
    sequential: dict[str, float] = {}
    for name, (run, items) in runs.items():
        if items is None:
            continue
        await run(kernel, items[:1], concurrency=1)  # the warm-up
        setattr(report, name, await run(kernel, items, concurrency=plan.concurrency))
        if plan.compare_loop:
            sequential[name] = (await run(kernel, items, concurrency=1)).examples_per_s
    report.sequential_examples_per_s = sequential or None
    return report


async def evaluate_model(model: str | ModelDriver, plan: EvalPlan, **boot_options: Any) -> ModelReport:
    """Load `model`, evaluate it, and let it go (its memory is free for the next one). The
    kernel has no memory store, MCP servers or durable processes: the evals use none."""
    options = {"memory": None, "mcp_servers": None, "durable": None, **boot_options}
    async with llmos.boot(model, **options) as kernel:
        report = await evaluate_kernel(kernel, plan)
    return report.model_copy(update={"model": model if isinstance(model, str) else report.model})


async def evaluate(models: Sequence[str | ModelDriver], plan: EvalPlan, *, inputs: dict[str, str] | None = None,
                   on_model: Callable[[str], None] = lambda name: None, **boot_options: Any) -> EvalReport:
    """Each model in turn (one loaded at a time), on the same items. `on_model(name)` is
    told before each loads."""
    reports = []
    for model in models:
        on_model(model if isinstance(model, str) else model.name)
        reports.append(await evaluate_model(model, plan, **boot_options))
    return EvalReport(created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      concurrency=plan.concurrency, qa_tokens=plan.qa_tokens, tool_tokens=plan.tool_tokens,
                      inputs=inputs or {}, models=reports)
