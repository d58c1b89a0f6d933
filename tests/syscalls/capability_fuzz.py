"""The capability fuzzer the property tests and `bench/security.py` share (a helper, not a test).

A *scenario* boots a kernel on a FakeDriver (no memory store, no embedder, no durable
runtime, no MCP servers) with a small cast of idle processes around one *actor* that holds
a random capability set:

    kernel (pid 0) ── root ──┬── actor ──┬── child ── grandchild
                  │          │           ├── guarded   (protected: no syscall may kill it)
                  │          │           └── ended     (ended, not yet reaped)
                  │          └── sibling
                  └── stranger

The actor issues a list of syscalls one at a time, in the dict form (`{"call": name,
**fields}`, as a remote caller sends them) and, every other valid one, as the request
object (as `Sys` methods send them). Just before each, `assess` works out from the
request's `capability` and `needs(caller)` what it needs, and whether the actor holds it,
by a reference implementation of the capability rule (`ref_grants`, written apart from
`llmos.kernel.capabilities.grants`) and its own walk of the process tree. `problems`
then says what went wrong:

- a call whose needs are not all held returned a result (an unauthorized success), or
  failed with another error than PermissionDenied (or NoSuchProcess, for a target that
  does not exist: ESRCH comes before EPERM), or changed anything (a process, a priority, a
  subscription, a mailbox, a generation, the console, a tool call) or was charged;
- any call raised something that is not a typed `SyscallError` (or blocked, where it may not);
- a call whose needs are held was refused with PermissionDenied (other than for a
  protected process or a path outside the workspace, which the handlers refuse themselves);
- a child the actor spawned holds a capability the actor does not.

Requests are drawn through a `Chooser`, so the same generators serve hypothesis (which
shrinks a failure to a small example) and a seeded `random.Random` loop (the bench).
"""

from __future__ import annotations

import math
import random
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio

import llmos
from llmos.kernel.capabilities import Control
from llmos.kernel.process import ProcState
from llmos.syscalls import TABLE, NoSuchProcess, PermissionDenied, SyscallError
from llmos.testing import FakeDriver, ScriptedConsole

T = TypeVar("T")

# -- capability names ----------------------------------------------------------------------------------
NAMESPACES = ("notes", "other", "actor")  # "actor" is the actor's own name: its own namespace
TOOLS = ("calculator", "current_time", "list_files", "read_file", "write_file", "run_python", "nope", "srv.echo")
# What a call may need, the wildcards above them, and near misses that must grant nothing more.
CAPABILITIES = (
    "proc.spawn", "proc.admin", "proc.exec", "ipc", "model.generate", "console", "memory", "net",
    *(f"memory.{access}.{ns}" for access in ("read", "write") for ns in NAMESPACES),
    *(f"tool.{name}" for name in TOOLS),
)
WILDCARDS = ("*", "proc.*", "memory.*", "memory.read.*", "memory.write.*", "tool.*", "tool.srv.*", "model.*")
NEAR_MISSES = ("proc", "tool", "memory.read", "procspawn", "proc.spawn.x", "Proc.spawn", "*.*", "proc.*.*", "",
               ".*", "tool.calculator.*", "ipc.*", "model", "memory.read.note", "tool.srv", " proc.admin")
UNIVERSE = CAPABILITIES + WILDCARDS + NEAR_MISSES


def ref_grants(granted: Sequence[str] | frozenset[str], wanted: str) -> bool:
    """The capability rule, written apart from llmos.kernel.capabilities.grants: "*" grants
    everything, a name grants itself, and "P.*" grants every name that begins with "P."."""
    return any(g == "*" or g == wanted or (g.endswith(".*") and wanted.startswith(g[:-1])) for g in granted)


# -- choosing ------------------------------------------------------------------------------------------
class Chooser(Protocol):
    def choice(self, options: Sequence[T]) -> T: ...
    def integer(self, lo: int, hi: int) -> int: ...
    def boolean(self) -> bool: ...
    def subset(self, options: Sequence[T], max_size: int) -> list[T]: ...


class RandomChooser:
    """A `Chooser` over a seeded random.Random (the bench's)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def boolean(self) -> bool:
        return self.rng.random() < 0.5

    def subset(self, options: Sequence[T], max_size: int) -> list[T]:
        return self.rng.sample(list(options), self.rng.randint(0, min(max_size, len(options))))


def capability_set(ch: Chooser) -> frozenset[str]:
    """A random set: a few names and wildcards, "*" now and then (then everything is allowed)."""
    if ch.integer(0, 19) == 0:
        return frozenset({"*"}) | frozenset(ch.subset(UNIVERSE, 2))
    return frozenset(ch.subset(CAPABILITIES, 6) + ch.subset(WILDCARDS[1:], 1) + ch.subset(NEAR_MISSES, 2))


# -- the cast and symbolic pids -------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A pid named by its role in the cast, resolved when the call is made: "self",
    "parent", "child", "grandchild", "sibling", "stranger", "guarded" or "ended"."""

    role: str

    def __repr__(self) -> str:
        return f"<{self.role}>"


ROLES = ("self", "parent", "child", "grandchild", "sibling", "stranger", "guarded", "ended")
NOBODY = (0, -1, 10**6, 2**63, -(2**63) - 1)


def target(ch: Chooser) -> Target | int:
    """A pid: mostly one of the cast (the actor's own family more often), now and then nobody's."""
    return Target(ch.choice(ROLES + ROLES[:3])) if ch.integer(0, 5) else ch.choice(NOBODY)


async def idle(sys: Any) -> None:
    """An app that waits until it is killed, or its kernel shuts down (it makes no syscall)."""
    await anyio.Event().wait()


async def noop(sys: Any) -> None:
    return None


# -- plausible requests, call by call --------------------------------------------------------------------
TEXT = ("hi", "What is 2+2?", "", " ", "x" * 300, "é\n\t", "{\"a\": 1}")
SMALL_FLOATS = (0, 0.0, 0.001, 0.01)
PAYLOADS = (None, 1, "hello", [1, 2], {"k": [True, None, 1.5]}, {"deep": [[[[[]]]]]})


def _text(ch: Chooser) -> str:
    return ch.choice(TEXT)


def _sampling(ch: Chooser) -> dict[str, Any]:
    fields: dict[str, Any] = {"max_tokens": ch.integer(1, 6)}
    if ch.boolean():
        fields["temperature"] = ch.choice((0.0, 0.7, 2.0))
    if ch.boolean():
        fields["seed"] = ch.integer(-5, 5)
    if ch.integer(0, 3) == 0:
        fields["stream"] = True
    return fields


def _spawn(ch: Chooser) -> dict[str, Any]:
    fields: dict[str, Any] = {"app": ch.choice((idle, idle, idle, noop, "missing_dir/app.py:main", "app.py",
                                                "llmos_no_such_module:main", "llmos.testing:noop_app"))}
    if ch.boolean():
        fields["caps"] = ch.subset(UNIVERSE, 4)
    if ch.boolean():
        fields["priority"] = ch.integer(-20, 19)
    if ch.boolean():
        fields["name"] = ch.choice(("worker", "child", "x" * 128))
    if ch.integer(0, 5) == 0:
        fields["durable"] = True
    return fields


def _namespace(ch: Chooser) -> dict[str, Any]:
    return {"namespace": ch.choice(NAMESPACES)} if ch.boolean() else {}


def _tool_arguments(ch: Chooser) -> dict[str, Any]:
    return ch.choice(({}, {"expression": "2*3"}, {"timezone": "UTC"}, {"path": "."}, {"path": "../../../etc/passwd"},
                      {"path": "notes.txt", "content": "hello"}, {"junk": [1, {"a": None}]}))


GENERATORS: dict[str, Callable[[Chooser], dict[str, Any]]] = {
    "spawn": _spawn,
    "wait": lambda ch: {"pid": target(ch), "timeout": ch.choice(SMALL_FLOATS)},
    "kill": lambda ch: {"pid": target(ch), **({"reason": _text(ch)} if ch.boolean() else {})},
    "suspend": lambda ch: {"pid": target(ch)},
    "resume": lambda ch: {"pid": target(ch)},
    "nice": lambda ch: {"priority": ch.integer(-20, 19), **({"pid": target(ch)} if ch.boolean() else {})},
    "set_model": lambda ch: {"model": ch.choice([None, "no-such-model"]), **({"pid": target(ch)} if ch.boolean() else {})},
    "set_status": lambda ch: {"text": _text(ch)},
    "ps": lambda ch: {"include_ended": ch.boolean()},
    "getpid": lambda ch: {},
    "sleep": lambda ch: {"seconds": ch.choice(SMALL_FLOATS)},
    "stats": lambda ch: {},
    "trace": lambda ch: {**({"pid": target(ch)} if ch.boolean() else {}), "limit": ch.integer(1, 20)},
    "send": lambda ch: {"to": ch.choice((target(ch), "root", "child", "stranger", "nobody")),
                        "payload": ch.choice(PAYLOADS)},
    "recv": lambda ch: {"timeout": ch.choice(SMALL_FLOATS)},
    "subscribe": lambda ch: {"topic": ch.choice(("news", "x"))},
    "unsubscribe": lambda ch: {"topic": ch.choice(("news", "x"))},
    "publish": lambda ch: {"topic": ch.choice(("news", "x")), "payload": ch.choice(PAYLOADS)},
    "chat": lambda ch: {"message": _text(ch) or "hi", **_sampling(ch),
                        **({"tools": ch.subset(TOOLS, 3) or ["calculator"]} if ch.integer(0, 2) == 0 else {})},
    "generate": lambda ch: {"prompt": _text(ch) or "hi", **_sampling(ch)},
    "choose": lambda ch: {"question": _text(ch) or "hi", "options": ch.choice((["yes", "no"], ["a", "b", "c"]))},
    "remember": lambda ch: {"text": _text(ch) or "note", **_namespace(ch)},
    "recall": lambda ch: {"query": _text(ch) or "note", "k": ch.integer(1, 5), **_namespace(ch)},
    "forget": lambda ch: {"id": ch.choice(("1", "abc")), **_namespace(ch)},
    "context.append": lambda ch: {"content": _text(ch), "role": ch.choice(("user", "assistant", "system")),
                                  "pin": ch.boolean()},
    "context.pin": lambda ch: {"index": ch.integer(-3, 3), "pinned": ch.boolean()},
    "context.clear": lambda ch: {"keep_pinned": ch.boolean()},
    "context.snapshot": lambda ch: {},
    "context.restore": lambda ch: {"snapshot": {"entries": [{"role": "user", "content": _text(ch)}],
                                                "summary": ch.choice(("", "before"))}},
    "context.stats": lambda ch: {},
    "write": lambda ch: {"text": _text(ch)},
    "ask_user": lambda ch: {"question": _text(ch) or "?", "timeout": 0.01},
    "call_tool": lambda ch: {"name": ch.choice(TOOLS), "arguments": _tool_arguments(ch),
                             **({"timeout": 5.0} if ch.boolean() else {})},
    "list_tools": lambda ch: {},
    "durable.ps": lambda ch: {},
    "durable.info": lambda ch: {"id": ch.choice(("abc", "x-1"))},
    "durable.wait": lambda ch: {"id": "abc", "timeout": 0},
    "durable.resume": lambda ch: {"id": "abc"},
    "durable.cancel": lambda ch: {"id": "abc"},
    # The library is the test's own LLMOS_HOME; no name pulls (pip) or imports anything real.
    "models.list": lambda ch: {},
    "models.show": lambda ch: {"name": ch.choice(("smollm2", "nope"))},
    "models.default": lambda ch: {},
    "models.import_path": lambda ch: {"path": ch.choice(("/no/such/model", "/")), **_model_name(ch)},
    "models.create": lambda ch: {"name": ch.choice(("mine", "bad name")), "base": ch.choice(("smollm2", "nope")),
                                 **({"system": _text(ch)} if ch.boolean() else {}),
                                 **({"params": {"temperature": ch.choice((0.5, -1))}} if ch.boolean() else {})},
    "models.cp": lambda ch: {"source": ch.choice(("smollm2", "nope")), "destination": ch.choice(("copy", "x/y"))},
    "models.rm": lambda ch: {"name": ch.choice(("smollm2", "nope", "mine"))},
    "models.set_default": lambda ch: {"name": ch.choice(("smollm2", "nope", None))},
    "models.add": lambda ch: {"name": "far", "url": ch.choice(("http://127.0.0.1:9/v1", "ftp://x"))},
    "models.pull": lambda ch: {"name": ch.choice(("nope", "no-such-model"))},
}


def _model_name(ch: Chooser) -> dict[str, Any]:
    return {"name": ch.choice(("mine", "bad name"))} if ch.boolean() else {}


def plausible_call(ch: Chooser, name: str | None = None) -> dict[str, Any]:
    """A request in dict form: a random call (or `name`) with plausible arguments. A call
    with no generator here (a syscall added since) gets no arguments, and is still checked."""
    name = name or ch.choice(sorted(TABLE.by_name))
    make = GENERATORS.get(name)
    return {"call": name, **(make(ch) if make else {})}


# -- running a scenario ----------------------------------------------------------------------------------
class CountingDriver(FakeDriver):
    """A FakeDriver that counts the generations handed to it (a refused call must make none)."""

    def __init__(self) -> None:
        super().__init__(max_batch=8)
        self.prepared = 0

    def prepare(self, job: Any) -> None:
        self.prepared += 1
        super().prepare(job)


@dataclass
class Outcome:
    """One syscall the actor made, and what came of it."""

    request: dict[str, Any]  # as sent (targets resolved)
    caps: frozenset[str]  # the actor's
    needs: list[Any] | None = None  # None: the request does not validate (it must fail EINVAL/ENOSYS)
    held: bool | None = None  # whether the actor holds every need (None when needs is None)
    target_missing: bool = False  # a Control need names a pid that does not exist
    kind: str = "pending"  # ok | error | other (not a SyscallError) | hung | killed (the actor died in it)
    error: BaseException | None = None
    changed: list[str] = field(default_factory=list)  # what a refused call changed (must stay empty)
    charged: bool = False
    child_caps: frozenset[str] | None = None  # a spawned child's capabilities

    def __str__(self) -> str:
        what = f"{type(self.error).__name__}: {short(self.error)}" if self.error is not None else self.kind
        return (f"{short(self.request)} by caps={sorted(self.caps)} needs={self.needs} held={self.held} -> "
                f"{self.kind} ({what})")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 4, 80, 300, 6, 8


def short(value: Any) -> str:
    """A bounded repr (junk may be a megabyte long or thousands of levels deep)."""
    return _SHORT.repr(value)


# Calls that may block past the harness's patience for a plausible value (none here: their
# timeouts are small) or for a junk one (an infinite or huge timeout is a legal wait).
MAY_BLOCK = frozenset({"sleep", "wait", "recv", "ask_user", "durable.wait", "call_tool"})


def _holds(kernel: Any, proc: Any, need: Any) -> tuple[bool, bool]:
    """(held, target missing), by ref_grants and a walk of the process tree."""
    if not isinstance(need, Control):
        return ref_grants(proc.capabilities, need), False
    if ref_grants(proc.capabilities, "proc.admin"):
        return True, False
    procs = {**kernel.procs.ended, **kernel.procs.live}
    if need.pid not in procs:
        return False, not need.gone_ok
    pid, seen = need.pid, set()
    while pid in procs and pid not in seen:
        if pid == proc.pid:
            return True, False
        seen.add(pid)
        pid = procs[pid].ppid
    return False, False


def assess(kernel: Any, proc: Any, request: dict[str, Any], outcome: Outcome) -> Any:
    """Fill in what `request` needs, from its class's `capability` and `needs(caller)`, and
    return it as a request object (None if it does not validate)."""
    try:
        req = TABLE.resolve(request)
    except SyscallError:
        return None
    needs = ([req.capability] if req.capability is not None else []) + list(req.needs(proc))
    held = [_holds(kernel, proc, need) for need in needs]
    outcome.needs, outcome.held = needs, all(h for h, _ in held)
    outcome.target_missing = any(missing for _, missing in held)
    return req


def _state(kernel: Any, actor: Any, cast: set[int], driver: CountingDriver, console: ScriptedConsole) -> dict[str, Any]:
    """What a refused call must leave as it was."""
    procs = {**kernel.procs.ended, **kernel.procs.live}
    return {
        "pids": sorted(procs),
        "cast states": {pid: procs[pid].state for pid in cast if pid in procs and pid != actor.pid},
        "priorities": {pid: p.priority for pid, p in procs.items()},
        "kill reasons": {pid: p.kill_reason for pid, p in procs.items()},
        "protected": sorted(kernel.protected),
        "topics": {topic: sorted(pids) for topic, pids in kernel.topics.items()},
        "mailboxes": {pid: p.mailbox_send.statistics().current_buffer_used for pid, p in procs.items()
                      if p.mailbox_send is not None},
        "generations": driver.prepared,
        "console": (len(console.written), len(console.questions)),
        "tool calls": actor.stats.tool_calls,
        "context": None if actor.context is None else repr(getattr(actor.context, "entries", None)),
    }


def call_name(request: dict[str, Any]) -> str:
    """The request's call, or "?" for junk in its place."""
    call = request.get("call")
    return call if isinstance(call, str) else "?"


def _resolve(value: Any, pids: dict[str, int]) -> Any:
    return pids[value.role] if isinstance(value, Target) else value


@dataclass
class Scenario:
    caps: frozenset[str]
    outcomes: list[Outcome]
    actor_status: Any = None


async def run_scenario(caps: frozenset[str], calls: Sequence[dict[str, Any]], *, patience_s: float = 5.0,
                       block_patience_s: float = 0.5) -> Scenario:
    """Boot a kernel, let an actor holding `caps` make `calls` one by one, and say what came
    of each. `patience_s`: how long one call may take before it counts as blocked;
    `block_patience_s`: the same for the calls that may block (MAY_BLOCK) when given a
    long timeout, as junk may."""
    driver, console = CountingDriver(), ScriptedConsole("yes", "no", "maybe")
    scenario = Scenario(caps, [])
    async with llmos.boot(driver, memory=None, embedder=None, durable=None, mcp_servers=None) as kernel:
        kernel.console = console
        ready = anyio.Event()
        pids: dict[str, int] = {}

        async def actor_main(sys: Any) -> None:
            await ready.wait()
            me = kernel.procs.get(pids["self"])
            for i, call in enumerate(calls):
                request = {key: _resolve(value, pids) for key, value in call.items()}
                outcome = Outcome(request, me.capabilities)
                scenario.outcomes.append(outcome)
                issued = assess(kernel, me, request, outcome)
                if issued is None or i % 2 == 0:  # every other valid call as a request object (as Sys sends them)
                    issued = request
                if outcome.held is False:  # let what earlier calls set going settle (a kill ends its process later)
                    await anyio.wait_all_tasks_blocked()
                before = _state(kernel, me, set(pids.values()), driver, console)
                charged_before = me.stats.syscalls
                try:
                    with anyio.move_on_after(block_patience_s if call_name(request) in MAY_BLOCK else patience_s):
                        answer = await sys.syscall(issued)
                        if isinstance(answer, llmos.syscalls.generate.TextStream):
                            await answer.text()
                        outcome.kind = "ok"
                        if call_name(request) == "spawn" and answer is not None:
                            outcome.child_caps = answer.capabilities
                    if outcome.kind == "pending":
                        outcome.kind = "hung"
                except SyscallError as exc:
                    outcome.kind, outcome.error = "error", exc
                except Exception as exc:  # noqa: BLE001 - what the property forbids: recorded, not raised
                    outcome.kind, outcome.error = "other", exc
                outcome.charged = me.stats.syscalls != charged_before
                if outcome.held is False:
                    after = _state(kernel, me, set(pids.values()), driver, console)
                    outcome.changed = [key for key in before if before[key] != after[key]]

        root = kernel.spawn_nowait(idle, name="root")
        actor = kernel.spawn_nowait(actor_main, name="actor", parent=root, caps=caps)
        pids.update(self=actor.pid, parent=root.pid,
                    sibling=kernel.spawn_nowait(idle, name="sibling", parent=root).pid,
                    stranger=kernel.spawn_nowait(idle, name="stranger").pid)
        child = kernel.spawn_nowait(idle, name="child", parent=actor)
        pids.update(child=child.pid, grandchild=kernel.spawn_nowait(idle, name="grandchild", parent=child).pid)
        guarded = kernel.spawn_nowait(idle, name="guarded", parent=actor)
        kernel.protected.add(guarded.pid)
        ended = kernel.spawn_nowait(noop, name="ended", parent=actor)
        pids.update(guarded=guarded.pid, ended=ended.pid)
        with anyio.fail_after(5):
            await ended.done.wait()
        ready.set()
        status = await kernel.wait(actor.pid, timeout=patience_s * (len(calls) + 2))
        scenario.actor_status = status
        last = scenario.outcomes[-1] if scenario.outcomes else None
        if (status.state is ProcState.KILLED and last is not None and last.kind == "pending"
                and call_name(last.request) == "kill" and last.request.get("pid") == actor.pid):
            last.kind = "killed"  # it killed itself
        elif status.state is not ProcState.EXITED:
            raise AssertionError(f"the actor ended {status.state.name}: {status.reason}\n{status.traceback}")
    return scenario


# -- the verdict --------------------------------------------------------------------------------------------
HANDLER_REFUSALS = ("is protected", "outside this process's workspace")  # EPERM a handler raises itself


def problems(scenario: Scenario, *, may_block: frozenset[str] = frozenset()) -> list[str]:
    """Everything that broke the properties in one scenario (empty: all held)."""
    found = []
    for o in scenario.outcomes:
        call = call_name(o.request)
        if o.kind == "other":
            found.append(f"untyped error: {o}")
        elif o.kind == "hung" and call not in may_block:
            found.append(f"blocked past the harness's patience: {o}")
        elif o.needs is None:  # invalid request: EINVAL or ENOSYS, nothing else
            if o.kind != "error" or o.error.code.name not in ("EINVAL", "ENOSYS"):
                found.append(f"an invalid request did not fail EINVAL/ENOSYS: {o}")
        elif o.held is False:
            if o.kind in ("ok", "hung", "killed"):
                found.append(f"UNAUTHORIZED SUCCESS: {o}")
            elif not (type(o.error) is PermissionDenied or (o.target_missing and type(o.error) is NoSuchProcess)):
                found.append(f"refused with the wrong error: {o}")
            if o.changed:
                found.append(f"a refused call changed {o.changed}: {o}")
            if type(o.error) is PermissionDenied and o.charged:
                found.append(f"a refused call was charged: {o}")
        elif type(o.error) is PermissionDenied and not any(s in o.error.message for s in HANDLER_REFUSALS):
            found.append(f"refused although its needs are held: {o}")
        if o.child_caps is not None:
            extra = [c for c in UNIVERSE if ref_grants(o.child_caps, c) and not ref_grants(o.caps, c)]
            extra += [c for c in o.child_caps if not ref_grants(o.caps, c)]
            if extra:
                found.append(f"a child holds more than its parent ({sorted(set(extra))}): {o}")
    return found


@dataclass
class Tally:
    """Counts over many scenarios (the bench's figures)."""

    attempts: int = 0
    invalid: int = 0  # requests that do not validate (EINVAL/ENOSYS before any check)
    denied: int = 0  # needs not held, and refused
    allowed: int = 0  # needs held (then succeeded, or failed on their own terms)
    allowed_ok: int = 0  # ... and returned a result
    unauthorized_successes: int = 0
    untyped_errors: int = 0
    other_problems: int = 0
    examples: list[str] = field(default_factory=list)
    by_call: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, scenario: Scenario, found: list[str]) -> None:
        for o in scenario.outcomes:
            self.attempts += 1
            row = self.by_call.setdefault(call_name(o.request), {"attempts": 0, "denied": 0, "allowed_ok": 0})
            row["attempts"] += 1
            if o.needs is None:
                self.invalid += 1
            elif o.held is False:
                self.denied += o.kind == "error"
                row["denied"] += o.kind == "error"
            else:
                self.allowed += 1
                self.allowed_ok += o.kind == "ok"
                row["allowed_ok"] += o.kind == "ok"
        for problem in found:
            if problem.startswith("UNAUTHORIZED"):
                self.unauthorized_successes += 1
            elif problem.startswith("untyped"):
                self.untyped_errors += 1
            else:
                self.other_problems += 1
            if len(self.examples) < 20:
                self.examples.append(problem)


# -- junk: random and boundary values for every field ----------------------------------------------------
BIG = "x" * 1_000_000
BOUNDARY_VALUES: tuple[Any, ...] = (
    0, -1, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**100,
    0.0, -0.0, 0.5, -1.5, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf,
    True, False, None,
    "", " ", "\x00", "\ud800", "a\u0000b", "é" * 10, "../../etc/passwd", BIG, "*", "proc.admin",
    b"bytes", bytearray(b"\xff"), [], [None], [1, "a", None], (), {}, {"a": {"b": {"c": None}}}, {1: 2},
    {"role": "user", "content": "x"}, [{"role": "user", "content": "x"}], frozenset({"*"}), {"*"},
    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],  # nested junk
    complex(1, 2), object(), Ellipsis, float, print,
)


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


# Valid arguments for each call, so that one junk field at a time is what is wrong.
BASELINE: dict[str, dict[str, Any]] = {
    "spawn": {"app": idle}, "wait": {"pid": Target("child"), "timeout": 0}, "kill": {"pid": Target("ended")},
    "suspend": {"pid": Target("grandchild")}, "resume": {"pid": Target("grandchild")}, "nice": {"priority": 0},
    "set_model": {"model": None}, "set_status": {"text": "step 1/2"},
    "sleep": {"seconds": 0}, "send": {"to": Target("self"), "payload": 1}, "recv": {"timeout": 0},
    "subscribe": {"topic": "t"}, "unsubscribe": {"topic": "t"}, "publish": {"topic": "t", "payload": 1},
    "chat": {"message": "hi", "max_tokens": 4}, "generate": {"prompt": "hi", "max_tokens": 4},
    "choose": {"question": "q", "options": ["a", "b"]}, "remember": {"text": "t"}, "recall": {"query": "q"},
    "forget": {"id": "x"}, "context.append": {"content": "c"}, "context.pin": {"index": 0},
    "context.restore": {"snapshot": {"entries": []}}, "write": {"text": "t"},
    "ask_user": {"question": "q", "timeout": 0.01},
    "call_tool": {"name": "calculator", "arguments": {"expression": "1+1"}},
    "durable.info": {"id": "abc"}, "durable.wait": {"id": "abc", "timeout": 0}, "durable.resume": {"id": "abc"},
    "durable.cancel": {"id": "abc"},
    "models.show": {"name": "nope"}, "models.import_path": {"path": "/no/such/model"},
    "models.create": {"name": "mine", "base": "nope"}, "models.cp": {"source": "nope", "destination": "copy"},
    "models.rm": {"name": "nope"}, "models.set_default": {"name": "nope"},
    "models.add": {"name": "far", "url": "ftp://x"}, "models.pull": {"name": "nope"},
}
# Junk that would have a spawn import or run something: an app reference is only ever one of these.
APP_JUNK = ("", ":", "a:b:c", "\x00", "\x00.py", "\ud800", "\ud800.py", "~no_such_user_llmos/app.py", "/", "/.py",
            "missing.py:main", "llmos_no_such_module", "llmos.kernel.params:NICE_MIN", "llmos.testing:idle", BIG)


def fields_of(name: str) -> list[str]:
    return sorted(TABLE.by_name[name].model_fields)


def junk_call(name: str, field_name: str, value: Any) -> dict[str, Any]:
    """The baseline request of `name` with `field_name` set to `value` ("call" itself too)."""
    request = {"call": name, **BASELINE.get(name, {})}
    request[field_name] = value
    return request
