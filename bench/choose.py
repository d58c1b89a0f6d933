"""Choosing among options with the model: tool choice and routing, by method, on labelled evals.

Three evals (bench/evals/):
  tool   tool_choice.jsonl: {"prompt", "tool"}: which of the six built-in tools (or "none")
         answers the prompt
  tool-heldout  tool_choice_heldout.jsonl: the same question on 70 prompts written later, blind
  tool-heldout2  tool_choice_heldout2.jsonl: 80 more, written blind after the "none" examples
                 were last changed (bench/evals/README.md)
         to the `examples` the built-in tools (and "none") carry for choosing them
  route  routing.jsonl: {"task", "specialist"}, over the specialists of specialists.json
         ({"name", "description"}): which specialist the supervisor should hand the task to
Each method decides every item of each eval, one decision at a time (one process per item,
nothing else running, so the times are a single decision's latency on this machine), on the
real SmolLM2-135M-Instruct loaded once. Per method and eval: accuracy, per-label recall (for
tool choice also the "none" recall: of the prompts labelled none, the share that got none),
the most frequent confusions, the predicted-label distribution, and the median / p90 wall
time per decision; every item's prediction is kept in bench/results/choose.json.

Methods (METHODS below; each is one function per eval, so another plugs in beside them):
  generate  the earlier way, for comparison.
            tool:  `sys.chat(prompt, tools=[the six], max_tokens=...)` with the kernel's
                   decision policy set to `GeneratedDecisions` (drivers/decisions.py): two
                   grammar-constrained turns, {"tool": <enum>},
                   then the chosen tool's arguments, or an ordinary answer for "none". The
                   pick is `reply.tool_calls[0].name`, or "none". Its time is the whole
                   call's (both turns: the choice turn and then the arguments, or the
                   answer); the choice turn alone is timed too, from the generation jobs
                   the call submits (the bench wraps the kernel's generation service's
                   `submit` to note when each job is asked for: the choice turn lasts from
                   its own submission to the next one's). When the arguments turn is cut
                   short by max_tokens, the call fails with EINVAL; the choice is then read
                   from the choice turn's JSON (counted in `cut_short`).
            route: the supervisor's router as it was: a router agent (prompt listing the
                   specialists, ROUTE_TOKENS of free text) and `old_choose(reply, ...)` (the
                   first name the reply mentions, else the best word overlap with the
                   descriptions: `named` says which).
  likelihood  the `choose` syscall without its similarity signal (no embedder).
  choose    llmos's way now: the `choose` syscall.
            tool:  the default policy's pick (`LikelihoodDecisions.pick_tool`) through the
                   process's own `choose` (the arguments turn that follows in
                   `chat(tools=...)` is not timed).
            route: `supervisor.route` for the one task.
Then the cost: per prompt, alternating, a tool choice by `choose` and 8 tokens generated
from the same prompt, and the ratio of their medians.

    .venv/bin/python bench/choose.py [--limit N] [--threads 2] [--evals tool,tool-heldout,tool-heldout2,route]
                                     [--methods generate,choose] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import torch

import llmos
from llmos.apps.workflows.agent import Agent, agent
from llmos.apps.workflows.supervisor import ROUTER, route
from llmos.drivers import compute
from llmos.drivers.decisions import GeneratedDecisions, LikelihoodDecisions
from llmos.drivers.transformers_driver import cpu_flags
from llmos.kernel.kernel import Kernel
from llmos.syscalls import InvalidRequest, Sys

HERE = Path(__file__).parent
EVALS = HERE / "evals"
HELDOUT = {"tool-heldout": "tool_choice_heldout.jsonl", "tool-heldout2": "tool_choice_heldout2.jsonl"}
RESULTS = HERE / "results" / "choose.json"
REPO_MODEL_CACHE = HERE.parent / ".cache" / "models"  # the test suite's de-quantized weights, if present
TOOLS = ("calculator", "current_time", "read_file", "write_file", "list_files", "run_python")
NONE = "none"  # the label (and pick) meaning "no tool"
ERROR = "<error>"  # the pick when a decision failed outright (the reason is in the item's detail)


# -- what a method returns ----------------------------------------------------------------------------
@dataclass
class Decision:
    """One decision: the label picked, its wall time in seconds, and whatever else the method
    reports about it (raw model output, partial timings...)."""

    pick: str
    seconds: float | None  # None when the decision failed
    detail: dict[str, Any] = field(default_factory=dict)


ToolFn = Callable[["Bench", str], Awaitable[Decision]]  # (bench, prompt) -> tool name or "none"
RouteFn = Callable[["Bench", str], Awaitable[Decision]]  # (bench, task) -> specialist name


class Method(NamedTuple):
    tool: ToolFn
    route: RouteFn
    about: str


@dataclass
class Bench:
    """What a method works with: the booted kernel (the real model loaded), the options, the
    specialists, and when each generation job was submitted (see `JobLog`)."""

    kernel: Kernel
    specialists: list[Agent]
    max_tokens: int
    jobs: JobLog

    async def run(self, main: Callable[..., Awaitable[Any]], *args: Any, caps: set[str]) -> Any:
        """Run `main(sys, *args)` as a process of its own and return its result (raising if it failed)."""
        proc = await self.kernel.spawn(main, *args, name="bench-choose", caps=caps)
        status = await self.kernel.wait(proc.pid)
        if not status.ok:
            raise RuntimeError(f"{status.state.name}: {status.reason}")
        return status.result


class JobLog:
    """Notes, per pid, when each generation job was asked for and the job itself, by wrapping the
    generation service's `submit` on this kernel's instance (no product code changes)."""

    def __init__(self, kernel: Kernel) -> None:
        service = kernel.generation
        assert service is not None, "the bench needs a kernel with a model"
        self.by_pid: dict[int, list[tuple[float, Any]]] = {}
        submit = service.submit

        async def noted(proc: Any, *args: Any, **kwargs: Any) -> Any:
            asked = time.perf_counter()
            job = await submit(proc, *args, **kwargs)
            self.by_pid.setdefault(proc.pid, []).append((asked, job))
            return job

        service.submit = noted  # type: ignore[method-assign]

    def pop(self, pid: int) -> list[tuple[float, Any]]:
        return self.by_pid.pop(pid, [])


# -- method "generate": today's way -------------------------------------------------------------------
async def generate_tool(bench: Bench, prompt: str) -> Decision:
    bench.kernel.decisions = GeneratedDecisions()
    pid_box: list[int] = []

    async def main(sys: Sys, prompt: str, max_tokens: int) -> dict[str, Any]:
        pid_box.append(sys.pid)
        started = time.perf_counter()
        try:
            reply = await sys.chat(prompt, tools=list(TOOLS), max_tokens=max_tokens)
        except InvalidRequest as exc:  # the arguments turn was cut short: the choice is still known
            return {"seconds": time.perf_counter() - started, "pick": None, "cut_short": str(exc),
                    "ended": time.perf_counter()}
        calls = [{"name": c.name, "arguments": c.arguments} for c in reply.tool_calls]
        return {"seconds": time.perf_counter() - started, "pick": calls[0]["name"] if calls else NONE,
                "calls": calls, "answer": reply.text[:200], "ended": time.perf_counter()}

    out = await bench.run(main, prompt, bench.max_tokens, caps={"model.generate", "tool.*"})
    jobs = bench.jobs.pop(pid_box[0])
    detail: dict[str, Any] = {"call_s": out["seconds"]}
    if jobs:  # the first job is the choice turn; it ends when the next one is asked for
        (asked, choice_job), rest = jobs[0], jobs[1:]
        detail["choice_turn_s"] = (rest[0][0] if rest else out["ended"]) - asked
        detail["choice_json"] = choice_job.text
        detail["choice_tokens"] = len(choice_job.token_ids)
    pick = out["pick"]
    if pick is None:  # cut short: read the choice turn
        detail["cut_short"] = True
        try:
            pick = json.loads(detail.get("choice_json", ""))["tool"]
        except (ValueError, KeyError, TypeError):
            pick = ERROR
    if out.get("calls"):
        detail["arguments"] = out["calls"][0]["arguments"]
    if out.get("answer"):
        detail["answer"] = out["answer"]
    return Decision(pick=pick, seconds=out["seconds"], detail=detail)


# The supervisor's router before `choose`: an agent generates a specialist's name, parsed.
OLD_ROUTER = Agent(name="router", system="You route tasks to the right specialist.",
                   prompt="Specialists:\n{specialists}\n\nTask: {input}\n\nWhich specialist should do this task? "
                          "Answer with the specialist's name only.")
ROUTE_TOKENS = 12


def old_choose(reply: str, specialists: list[Agent], task: str) -> Agent:
    """The specialist the router's reply names first; failing that, the one whose
    description shares most words with the task; failing that, the first."""
    named = [(reply.lower().find(s.name.lower()), i) for i, s in enumerate(specialists)]
    found = sorted((at, i) for at, i in named if at >= 0)
    if found:
        return specialists[found[0][1]]
    words = set(re.findall(r"\w+", task.lower()))
    overlap = [len(words & set(re.findall(r"\w+", f"{s.name} {s.description}".lower()))) for s in specialists]
    return specialists[overlap.index(max(overlap))]


async def generate_route(bench: Bench, task: str) -> Decision:
    team = bench.specialists
    listing = "\n".join(f"- {s.name}: {s.description}" for s in team)
    spec = OLD_ROUTER.model_copy(update={"prompt": OLD_ROUTER.prompt.replace("{specialists}", listing)})

    async def main(sys: Sys, task: str) -> dict[str, Any]:
        started = time.perf_counter()
        reply = await agent(sys, spec.model_dump(), task, "bench-choose", ROUTE_TOKENS)  # the router, unspawned
        return {"seconds": time.perf_counter() - started, "reply": reply}

    out = await bench.run(main, task, caps={"model.generate", "ipc"})
    pick = old_choose(out["reply"], team, task).name
    named = any(s.name.lower() in out["reply"].lower() for s in team)
    return Decision(pick=pick, seconds=out["seconds"], detail={"reply": out["reply"], "named": named})


# -- method "choose": options ranked by likelihood -----------------------------------------------------
class SysModel:
    """`ModelAccess` over a process's own `choose` syscall, keeping each Choice."""

    def __init__(self, sys: Sys) -> None:
        self.sys, self.choices = sys, []

    async def json(self, turn: Any) -> Any:
        raise AssertionError("the likelihood policy picks without a JSON turn")

    async def choose(self, question: str, options: Any, descriptions: Any = None, system: Any = None,
                     examples: Any = None) -> int:
        choice = await self.sys.choose(question, list(options), descriptions=descriptions, system=system,
                                       examples=examples)
        self.choices.append(choice)
        return choice.index


async def choose_tool(bench: Bench, prompt: str) -> Decision:
    """The kernel's default policy picks, through the `choose` syscall (the arguments turn
    that `chat(tools=...)` would run next is left out: only the pick is timed)."""
    async def main(sys: Sys, prompt: str) -> dict[str, Any]:
        specs = [spec for spec in await sys.list_tools() if spec.name in TOOLS]
        model = SysModel(sys)
        started = time.perf_counter()
        spec = await LikelihoodDecisions().pick_tool(specs, prompt, model)
        return {"seconds": time.perf_counter() - started, "pick": spec.name if spec else NONE,
                "choice": model.choices[0].model_dump()}

    out = await bench.run(main, prompt, caps={"model.generate", "tool.*"})
    return Decision(pick=out["pick"], seconds=out["seconds"], detail={"choice": out["choice"]})


async def choose_route(bench: Bench, task: str) -> Decision:
    async def main(sys: Sys, task: str) -> dict[str, Any]:
        started = time.perf_counter()
        [picked] = await route(sys, ROUTER, bench.specialists, [task], "bench-choose")
        return {"seconds": time.perf_counter() - started, "pick": picked.name}

    out = await bench.run(main, task, caps={"model.generate", "ipc"})
    return Decision(pick=out["pick"], seconds=out["seconds"], detail={})


# -- cost: a choice against generating 8 tokens from the same prompt --------------------------------
async def cost(bench: Bench, prompts: list[str]) -> dict[str, Any]:
    """Alternating, per prompt: a tool choice by `choose` (the default policy's pick: the
    likelihood pass and the similarity), and 8 tokens generated from the very prompt the
    choice scores its options after. Medians, and their ratio."""
    async def main(sys: Sys, prompt: str) -> dict[str, Any]:
        specs = [spec for spec in await sys.list_tools() if spec.name in TOOLS]
        policy = LikelihoodDecisions()
        started = time.perf_counter()
        await policy.pick_tool(specs, prompt, SysModel(sys))
        chose = time.perf_counter() - started
        messages = policy.choice_messages(prompt, [s.name for s in specs] + [NONE],
                                          None, "Which tool should handle the user's request? Pick one of the options.")
        started = time.perf_counter()
        reply = await sys.chat(messages=[m.model_dump() for m in messages], max_tokens=8)
        return {"choose_s": chose, "generate8_s": time.perf_counter() - started, "tokens": reply.completion_tokens}

    runs = [await bench.run(main, p, caps={"model.generate", "tool.*"}) for p in prompts]
    med = {k: statistics.median(r[k] for r in runs) for k in ("choose_s", "generate8_s")}
    return {"n": len(runs), **med, "ratio": med["choose_s"] / med["generate8_s"],
            "generated_tokens": statistics.median(r["tokens"] for r in runs), "options": len(TOOLS) + 1}


METHODS: dict[str, Method] = {
    "generate": Method(generate_tool, generate_route,
                       "the earlier way: the choice generated as a JSON enum / a router agent generating a name"),
    "choose": Method(choose_tool, choose_route, "the choose syscall: likelihood and meaning (llmos's default)"),
    "likelihood": Method(lambda bench, text: _without_meaning(bench, choose_tool, text),
                         lambda bench, text: _without_meaning(bench, choose_route, text),
                         "the choose syscall on a kernel without an embedder: the model's likelihood alone"),
}


async def _without_meaning(bench: Bench, decide: Callable[[Bench, str], Awaitable[Decision]], text: str) -> Decision:
    embedder, bench.kernel.embedder = bench.kernel.embedder, None
    try:
        return await decide(bench, text)
    finally:
        bench.kernel.embedder = embedder


# -- evals ----------------------------------------------------------------------------------------------
class Eval(NamedTuple):
    name: str
    items: list[tuple[str, str]]  # (input, gold label)
    labels: list[str]
    method_fn: Callable[[Method], ToolFn | RouteFn]


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_specialists() -> list[Agent]:
    return [Agent(name=s["name"], description=s["description"])
            for s in json.loads((EVALS / "specialists.json").read_text(encoding="utf-8"))]


def load_evals(names: list[str], limit: int | None, specialists: list[Agent]) -> list[Eval]:
    evals = []
    for name in names:
        if name == "tool":
            rows = [(r["prompt"], r["tool"]) for r in load_jsonl(EVALS / "tool_choice.jsonl")]
            evals.append(Eval("tool", rows[:limit], [*TOOLS, NONE], lambda m: m.tool))
        elif name in HELDOUT:  # written blind to the tools' `examples` (bench/evals/README.md)
            rows = [(r["prompt"], r["tool"]) for r in load_jsonl(EVALS / HELDOUT[name])]
            evals.append(Eval(name, rows[:limit], [*TOOLS, NONE], lambda m: m.tool))
        elif name == "route":
            rows = [(r["task"], r["specialist"]) for r in load_jsonl(EVALS / "routing.jsonl")]
            evals.append(Eval("route", rows[:limit], [s.name for s in specialists], lambda m: m.route))
        else:
            raise SystemExit(f"unknown eval {name!r}: expected tool, {', '.join(HELDOUT)}, route")
    for ev in evals:
        unknown = {gold for _, gold in ev.items} - set(ev.labels)
        assert not unknown, f"{ev.name}: labels {unknown} are not among {ev.labels}"
    return evals


# -- figures ------------------------------------------------------------------------------------------
def quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[round(q * 100) - 1]


def summary(ev: Eval, items: list[dict[str, Any]]) -> dict[str, Any]:
    golds, picks = [i["gold"] for i in items], [i["pick"] for i in items]
    right = [g == p for g, p in zip(golds, picks, strict=True)]
    per_label = {label: {"n": golds.count(label),
                         "recall": (sum(r for g, r in zip(golds, right) if g == label) / golds.count(label)
                                    if label in golds else None)}
                 for label in ev.labels}
    confusions = Counter((g, p) for g, p in zip(golds, picks) if g != p)
    times = [i["seconds"] for i in items]
    out: dict[str, Any] = {
        "n": len(items), "correct": sum(right), "accuracy": sum(right) / len(items) if items else None,
        "per_label": per_label,
        "predicted": dict(Counter(picks).most_common()),
        "top_confusions": [{"gold": g, "pick": p, "count": c} for (g, p), c in confusions.most_common(10)],
        "time_s": {"median": quantile(times, 0.5), "p90": quantile(times, 0.9), "mean": statistics.fmean(times)},
    }
    if ev.name.startswith("tool"):
        out["none_recall"] = per_label[NONE]["recall"]
        tooled = [r for g, r in zip(golds, right) if g != NONE]
        out["tool_accuracy"] = sum(tooled) / len(tooled) if tooled else None  # prompts labelled with a tool
        said_none = [g for g, p in zip(golds, picks) if p == NONE]
        out["none_precision"] = said_none.count(NONE) / len(said_none) if said_none else None
    turns = [i["detail"]["choice_turn_s"] for i in items if "choice_turn_s" in i["detail"]]
    if turns:
        out["choice_turn_time_s"] = {"median": quantile(turns, 0.5), "p90": quantile(turns, 0.9)}
    cut = sum(1 for i in items if i["detail"].get("cut_short"))
    if cut:
        out["cut_short"] = cut
    if any("named" in i["detail"] for i in items):  # the router's reply named a specialist, or choose() fell back
        named = [i["gold"] == i["pick"] for i in items if i["detail"].get("named")]
        fallback = [i["gold"] == i["pick"] for i in items if not i["detail"].get("named")]
        out["router_named_a_specialist"] = {"n": len(named), "accuracy": sum(named) / len(named) if named else None}
        out["router_fell_back_to_word_overlap"] = {"n": len(fallback),
                                                   "accuracy": sum(fallback) / len(fallback) if fallback else None}
    errors = sum(1 for i in items if i["pick"] == ERROR)
    if errors:
        out["errors"] = errors
    return out


# -- running ------------------------------------------------------------------------------------------
async def run_eval(bench: Bench, ev: Eval, method_name: str, method: Method) -> dict[str, Any]:
    decide = ev.method_fn(method)
    items = []
    for k, (text, gold) in enumerate(ev.items, 1):
        try:
            decision = await decide(bench, text)
        except Exception as exc:  # one broken decision is reported, not fatal
            decision = Decision(pick=ERROR, seconds=None, detail={"error": f"{type(exc).__name__}: {exc}"})
        items.append({"input": text, "gold": gold, **asdict(decision)})
        mark = "ok " if decision.pick == gold else "BAD"
        print(f"  [{method_name}/{ev.name} {k:3}/{len(ev.items)}] {mark} {fmt(decision.seconds, '5.2f')}s "
              f"gold={gold:12} pick={decision.pick:12} {text[:60]!r}", file=sys.stderr, flush=True)
    timed = [i for i in items if i["pick"] != ERROR]
    return {"summary": summary(ev, timed) | {"errors": len(items) - len(timed)}, "items": items}


async def run_all(model: llmos.Model, evals: list[Eval], methods: list[str], specialists: list[Agent],
                  max_tokens: int) -> dict[str, Any]:
    async with llmos.boot(model, memory=None, mcp_servers=None) as kernel:
        bench = Bench(kernel=kernel, specialists=specialists, max_tokens=max_tokens, jobs=JobLog(kernel))
        results: dict[str, Any] = {}
        for name in methods:
            method = METHODS[name]
            # Warm up (first-call costs: oneDNN kernels, grammar compilation) on an input of each
            # eval that is not timed.
            for ev in evals:
                await ev.method_fn(method)(bench, "Hello there, how are you?")
            results[name] = {"about": method.about}
            for ev in evals:
                results[name][ev.name] = await run_eval(bench, ev, name, method)
        tool_eval = next((ev for ev in evals if ev.name == "tool"), None)
        if "choose" in methods and tool_eval is not None:
            results["cost"] = await cost(bench, [text for text, _ in tool_eval.items[:20]])
        return results


def machine(threads: int) -> dict[str, Any]:
    flags = cpu_flags()
    model_name = ""
    try:
        model_name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model_name, "cpus": os.cpu_count(),
            "cpu_flags": sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx"))),
            "python": platform.python_version(), "torch": torch.__version__, "threads": threads,
            "loadavg_1m_at_start": os.getloadavg()[0]}


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'method':10} {'eval':6} {'n':>4} {'accuracy':>9} {'none-rec':>9} {'tool-acc':>9} "
          f"{'median s':>9} {'p90 s':>7} {'choice-turn med/p90 s':>22}")
    for name, by_eval in results.items():
        if name == "cost":
            continue
        for ev_name, res in by_eval.items():
            if ev_name == "about":
                continue
            s = res["summary"]
            turn = s.get("choice_turn_time_s")
            turn_text = f"{fmt(turn['median'], '.2f')} / {fmt(turn['p90'], '.2f')}" if turn else "-"
            print(f"{name:10} {ev_name:6} {s['n']:>4} {fmt(s['accuracy']):>9} {fmt(s.get('none_recall')):>9} "
                  f"{fmt(s.get('tool_accuracy')):>9} {fmt(s['time_s']['median'], '.2f'):>9} "
                  f"{fmt(s['time_s']['p90'], '.2f'):>7} {turn_text:>22}")
    for name, by_eval in results.items():
        if name == "cost":
            c = by_eval
            print(f"\ncost: a choice among {c['options']} options {c['choose_s']:.3f} s, 8 tokens generated from "
                  f"the same prompt {c['generate8_s']:.3f} s (median of {c['n']}; x{c['ratio']:.2f})")
            continue
        for ev_name, res in by_eval.items():
            if ev_name == "about":
                continue
            s = res["summary"]
            recalls = ", ".join(f"{label} {fmt(v['recall'], '.2f')} ({v['n']})" for label, v in s["per_label"].items())
            confusions = ", ".join(f"{c['gold']}->{c['pick']} x{c['count']}" for c in s["top_confusions"][:6])
            print(f"\n{name}/{ev_name}: recall per label: {recalls}")
            print(f"  predicted: {s['predicted']}")
            print(f"  top confusions: {confusions or 'none'}")
            for extra in ("none_precision", "cut_short", "router_named_a_specialist",
                          "router_fell_back_to_word_overlap", "errors"):
                if s.get(extra):
                    print(f"  {extra}: {s[extra]}")


def use_model_cache() -> None:
    """Run in a temporary LLMOS_HOME (never ~/.llmos) whose model cache is the repository's
    (.cache/models, the test suite's), so the weights are not de-quantized again; a given
    LLMOS_HOME is respected."""
    if os.environ.get("LLMOS_HOME"):
        return
    home = Path(tempfile.mkdtemp(prefix="llmos-bench-choose-"))
    if REPO_MODEL_CACHE.is_dir():
        (home / "models").symlink_to(REPO_MODEL_CACHE.resolve(), target_is_directory=True)
    os.environ["LLMOS_HOME"] = str(home)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N items of each eval")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--evals", default="tool,tool-heldout,tool-heldout2,route",
                        help="comma-separated: tool, tool-heldout, tool-heldout2, route")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of: {', '.join(METHODS)}")
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="max_tokens of the generate method's tool call (arguments turn, or the answer)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}: expected some of {list(METHODS)}")
    use_model_cache()
    at_start = machine(args.threads)
    specialists = load_specialists()
    evals = load_evals([e for e in args.evals.split(",") if e], args.limit, specialists)

    compute.call(torch.set_num_threads, args.threads)  # OpenMP's thread count is per calling thread
    started = time.perf_counter()
    model = llmos.load_model("smollm2")
    compute.call(torch.set_num_threads, args.threads)  # loading sets the default again
    load_s = time.perf_counter() - started
    print(f"loaded {model.driver.name} in {load_s:.1f} s; {compute.call(torch.get_num_threads)} torch threads",
          file=sys.stderr)

    started = time.perf_counter()
    results = anyio.run(run_all, model, evals, methods, specialists, args.max_tokens)
    wall = time.perf_counter() - started
    print_table(results)

    out = {"machine": at_start | {"loadavg_1m_at_end": os.getloadavg()[0]},
           "model": model.driver.name, "dtype": str(model.driver.model.dtype).removeprefix("torch."),
           "limit": args.limit, "max_tokens": args.max_tokens, "route_tokens": ROUTE_TOKENS,
           "evals": {ev.name: {"n": len(ev.items), "labels": dict(Counter(g for _, g in ev.items))} for ev in evals},
           "specialists": [{"name": s.name, "description": s.description} for s in specialists],
           "wall_s": wall, "methods": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"\nsaved {args.out} ({wall:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
