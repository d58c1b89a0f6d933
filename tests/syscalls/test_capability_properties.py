"""Property tests of the one place capabilities are checked (kernel/dispatch.py), by hypothesis.

- Processes with random capability sets issue random syscalls (a random request class from
  the table, plausible arguments, pids of their own family and of others): a call whose
  needs (its class's `capability` and `needs(caller)`) are not all granted never succeeds,
  fails with PermissionDenied (NoSuchProcess for a target that does not exist), changes
  nothing and is not charged; one whose needs are granted is never refused with EPERM by
  the dispatcher; every outcome is a result or a typed SyscallError; and a child spawned
  holds nothing its parent does not.
- What each call needs agrees with the policy the docs state, written here apart from the
  request classes (a new syscall must say what it needs here too).
- Random and boundary values for every field of every request (ints at 0/-1/2**63, NaN and
  infinities, huge and odd strings, wrong types, nested junk) get typed errors only.

The harness is `capability_fuzz.py` beside this file (shared with bench/security.py, which
runs the same property 10,000 times). Bounded for CI: fixed seeds (derandomize), no example
database, a few hundred examples in all.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmos.kernel import Kernel
from llmos.kernel.abi import Request
from llmos.kernel.capabilities import Control
from llmos.kernel.dispatch import SyscallTable
from llmos.kernel.errors import InvalidRequest
from llmos.syscalls import TABLE, Sys, SyscallError
from llmos.testing import result, spawn_and_wait

_spec = importlib.util.spec_from_file_location("capability_fuzz", Path(__file__).with_name("capability_fuzz.py"))
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("capability_fuzz", fuzz)
_spec.loader.exec_module(fuzz)

CALLS = sorted(TABLE.by_name)


def bounded(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class DrawChooser:
    """The harness's `Chooser` over hypothesis's `data.draw` (so failures shrink)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def choice(self, options: Any) -> Any:
        return self.data.draw(st.sampled_from(options))

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def boolean(self) -> bool:
        return self.data.draw(st.booleans())

    def subset(self, options: Any, max_size: int) -> list[Any]:
        return self.data.draw(st.lists(st.sampled_from(options), max_size=max_size, unique=True))


def check(caps: frozenset[str], calls: list[dict[str, Any]], may_block: frozenset[str] = frozenset(),
          **options: Any) -> Any:
    """Run the calls as an actor holding `caps`, and fail with every problem found."""
    scenario = anyio.run(lambda: fuzz.run_scenario(caps, calls, **options))
    found = fuzz.problems(scenario, may_block=may_block)
    assert found == [], "\n".join(found)
    return scenario


# -- random syscalls from processes with random capability sets ---------------------------------------------
@bounded(120)
@given(st.data())
def test_random_syscalls_never_succeed_without_the_grant(data: st.DataObject) -> None:
    ch = DrawChooser(data)
    caps = fuzz.capability_set(ch)
    calls = [fuzz.plausible_call(ch) for _ in range(ch.integer(1, 8))]
    check(caps, calls)


@pytest.mark.parametrize("call", CALLS)
@bounded(5)
@given(data=st.data())
def test_each_syscall_is_checked(call: str, data: st.DataObject) -> None:
    ch = DrawChooser(data)
    check(fuzz.capability_set(ch), [fuzz.plausible_call(ch, call) for _ in range(3)])


@pytest.mark.parametrize("call", CALLS)
def test_a_process_holding_nothing_is_refused_every_call_that_needs_something(call: str) -> None:
    """Deterministic: an actor with no capability makes each call three ways; every call
    with a need is refused (and the harness's verdict is not vacuous: some are)."""
    ch = fuzz.RandomChooser(zlib.crc32(call.encode()))
    scenario = check(frozenset(), [fuzz.plausible_call(ch, call) for _ in range(6)])
    needy = [o for o in scenario.outcomes if o.needs]
    assert all(o.held is False and o.kind == "error" for o in needy if not _own_family(o)), needy


def _own_family(outcome: Any) -> bool:
    """A call whose only needs are Control of itself or a descendant: held with no capability."""
    return outcome.held is True and all(isinstance(n, Control) for n in outcome.needs)


@pytest.mark.parametrize("call", CALLS)
def test_a_process_holding_everything_is_refused_nothing_by_the_dispatcher(call: str) -> None:
    ch = fuzz.RandomChooser(zlib.crc32(call.encode()))
    scenario = check(frozenset({"*"}), [fuzz.plausible_call(ch, call) for _ in range(6)])
    assert all(o.held is not False for o in scenario.outcomes)


# -- what each call needs, as the docs state it ----------------------------------------------------------------
def documented_needs(req: Any, caller: Any) -> set[Any]:
    """The policy of docs/ARCHITECTURE.md and the syscall modules' docstrings, written apart
    from the request classes' `capability` and `needs`."""
    call, needs = req.call, set()
    admin_to_raise = {"proc.admin"} if getattr(req, "priority", None) is not None and req.priority < caller.priority \
        else set()
    if call == "spawn":
        needs = {"proc.spawn"} | admin_to_raise
        if isinstance(req.app, str) and req.app.partition(":")[0].endswith(".py"):
            needs.add("proc.exec")
    elif call in ("wait", "kill", "suspend", "resume"):
        needs = {Control(req.pid)}
    elif call == "nice":
        needs = admin_to_raise | ({Control(req.pid)} if req.pid is not None else set())
    elif call == "set_model":
        needs = {Control(req.pid)} if req.pid is not None else set()
    elif call == "trace":
        needs = {"proc.admin"} if req.pid is None else {Control(req.pid, gone_ok=True)}
    elif call in ("send", "recv", "subscribe", "unsubscribe", "publish"):
        needs = {"ipc"}
    elif call == "chat":
        needs = {"model.generate"} | {f"tool.{name}" for name in req.tools or ()}
    elif call in ("generate", "choose"):
        needs = {"model.generate"}
    elif call in ("remember", "forget", "recall"):
        access = "read" if call == "recall" else "write"
        needs = {"memory"} | ({f"memory.{access}.{req.namespace}"}
                              if req.namespace is not None and req.namespace != caller.name else set())
    elif call in ("write", "ask_user"):
        needs = {"console"}
    elif call == "call_tool":
        needs = {f"tool.{req.name}"}
    elif call in ("durable.resume", "durable.cancel"):
        needs = {"proc.admin"}
    elif call in ("models.import_path", "models.create", "models.cp", "models.rm", "models.set_default",
                  "models.add", "models.pull"):
        needs = {"models.admin"}
    elif call in ("ps", "getpid", "sleep", "stats", "list_tools", "durable.ps", "durable.info", "durable.wait",
                  "set_status", "models.list", "models.show", "models.default") \
            or call.startswith("context."):
        needs = set()
    else:
        pytest.fail(f"the syscall {call!r} is new: state what it needs in documented_needs (and a generator in "
                    "capability_fuzz.GENERATORS)")
    return needs


@bounded(300)
@given(st.data(), st.integers(-20, 19), st.sampled_from(["actor", "notes", "worker"]))
def test_what_each_call_needs_is_the_documented_policy(data: st.DataObject, priority: int, name: str) -> None:
    request = fuzz.plausible_call(DrawChooser(data))
    request = {k: (7 if isinstance(v, fuzz.Target) else v) for k, v in request.items()}  # some pid
    try:
        req = TABLE.resolve(request)
    except SyscallError:
        return
    caller = SimpleNamespace(pid=2, ppid=1, name=name, priority=priority, capabilities=frozenset())
    stated = {req.capability} if req.capability is not None else set()
    assert stated | set(req.needs(caller)) == documented_needs(req, caller)


def test_every_syscall_has_a_generator_and_a_documented_policy() -> None:
    assert sorted(set(CALLS) - set(fuzz.GENERATORS)) == []
    assert sorted(set(CALLS) - set(fuzz.BASELINE) - {"ps", "getpid", "stats", "trace", "list_tools", "durable.ps",
                                                     "models.list", "models.default", "context.clear", "context.snapshot", "context.stats"}) == []


# -- random and boundary values for every field ------------------------------------------------------------------
DEEP = fuzz.nested(5000)


def _sweep(call: str) -> list[dict[str, Any]]:
    calls = []
    for field in fuzz.fields_of(call):
        values = fuzz.APP_JUNK if (call, field) == ("spawn", "app") else fuzz.BOUNDARY_VALUES
        for value in (*values, fuzz.nested(100)):
            calls.append(fuzz.junk_call(call, field, value))
    return calls


@pytest.mark.parametrize("call", CALLS)
def test_boundary_values_in_every_field_get_typed_errors_only(call: str) -> None:
    """Every field of `call`, one at a time, set to each boundary value (the others valid),
    by a process holding everything; then by one holding nothing, which must be refused
    whatever the junk (or told EINVAL first)."""
    calls = _sweep(call)
    check(frozenset({"*"}), calls, block_patience_s=0.05, may_block=fuzz.MAY_BLOCK)
    check(frozenset(), calls, block_patience_s=0.05, may_block=fuzz.MAY_BLOCK)


def test_junk_requests_and_call_names_get_typed_errors_only() -> None:
    calls = [{"call": value} for value in fuzz.BOUNDARY_VALUES if not isinstance(value, str) or value != "getpid"]
    calls += [{"call": "getpid", "extra": DEEP}, {"call": "sleep", "seconds": math.nan, "junk": 1}]
    scenario = check(frozenset({"*"}), calls)
    assert all(o.kind == "error" and o.error.code.name in ("EINVAL", "ENOSYS") for o in scenario.outcomes)


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | st.binary(max_size=8)
    | st.sampled_from(fuzz.BOUNDARY_VALUES),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@bounded(150)
@given(st.data())
def test_random_junk_in_random_fields_gets_typed_errors_only(data: st.DataObject) -> None:
    ch = DrawChooser(data)
    call = ch.choice(CALLS)
    fields = fuzz.fields_of(call)
    request = {"call": call, **fuzz.BASELINE.get(call, {})}
    for field in ch.subset(fields, 3) if fields else []:
        if (call, field) == ("spawn", "app"):  # never a random module name to import: junk app references only
            request[field] = data.draw(st.sampled_from(
                list(fuzz.APP_JUNK)) | junk.filter(
                lambda v: not isinstance(v, str)))
        else:
            request[field] = data.draw(junk)
    check(fuzz.capability_set(ch), [request], block_patience_s=0.05, may_block=fuzz.MAY_BLOCK)


# -- the defects found (fixed), one reproducer each ----------------------------------------------------------------------
@pytest.mark.parametrize("app", ["\x00.py", "\ud800.py", "~no_such_user_llmos/app.py"],
                         ids=["nul", "lone-surrogate", "unknown-user-home"])
def test_spawn_of_an_unloadable_app_file_name_is_einval(app: str) -> None:
    check(frozenset({"*"}), [{"call": "spawn", "app": app}])


def test_spawn_of_a_deeply_nested_app_is_einval() -> None:
    check(frozenset({"*"}), [{"call": "spawn", "app": DEEP}])


class Boom(Request[None]):
    """A syscall whose handler has a bug (raises something untyped)."""

    call: ClassVar[str] = "boom"


async def sys_boom(kernel: Kernel, caller: Any, req: Boom) -> None:
    raise RuntimeError("a bug in a handler")


class Grouped(Request[None]):
    """A syscall whose handler's task group fails with a typed error in a child."""

    call: ClassVar[str] = "grouped"


async def sys_grouped(kernel: Kernel, caller: Any, req: Grouped) -> None:
    async def child() -> None:
        raise InvalidRequest("a child's typed error")

    async with anyio.create_task_group() as tg:
        tg.start_soon(child)


@pytest.mark.parametrize(("request_type", "handler", "kind", "said"), [
    (Boom, sys_boom, "KernelFault", "[EIO] boom failed inside the kernel: RuntimeError: a bug in a handler"),
    (Grouped, sys_grouped, "InvalidRequest", "[EINVAL] a child's typed error"),  # the group's typed error, as itself
], ids=["untyped", "typed-in-a-task-group"])
async def test_what_a_handler_raises_reaches_the_caller_typed_and_is_traced_so(request_type, handler, kind,
                                                                                said) -> None:
    async def main(sys: Any) -> Any:
        try:
            await sys.syscall(request_type())
        except SyscallError as exc:
            return type(exc).__name__, str(exc)
        return "returned"

    async with Kernel(SyscallTable({**TABLE.handlers, request_type: handler}), Sys) as kernel:
        raised = result(await spawn_and_wait(kernel, main))
        outcomes = [e.outcome for e in kernel.trace if e.call == request_type.call]
    assert raised == (kind, said)
    assert outcomes == [said[1:said.index("]")]]  # the errno name
