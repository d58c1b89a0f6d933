"""Kill -9 loops over durable processes, measured: what the reliability test (20 cycles)
and `bench/reliability.py` (100) run.

A kernel boots in a child OS process on one LLMOS_HOME, runs `agents` durable agents (each
`turns` turns of: a generation, a tool call, a memory write, a console line acknowledging
the write), and is killed with SIGKILL at a random moment; the next kernel resumes them.
After the last kill a kernel runs them to their end. Ledgers kept outside the kernel say
what really happened: every generation the model was asked for and every tool execution,
with the kernel OS process that did it, and every write the agents acknowledged.

Counted: acknowledged memory writes lost (0 expected) or stored twice (0); durable
processes lost (0); generations and tool calls run again. A re-run is expected only for
the one a killed kernel was inside when it died (its result was not yet recorded): those
are counted apart from the re-runs that should not happen (0 expected).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

AGENT_APP = '''
async def main(sys, agent, turns):
    for i in range(int(turns)):
        await sys.chat(f"agent {agent} turn {i}: say one word.", max_tokens=4)
        await sys.call_tool("ledger", agent=int(agent), turn=i)
        await sys.remember(f"agent {agent} fact {i}")
        await sys.write(f"ack {agent} {i}\\n")
    return int(turns)
'''

KERNEL = r'''
import json, os, re, sys
import anyio
import llmos
from llmos.testing import FakeDriver

config = json.loads(sys.argv[1])
work = config["work"]
PID = os.getpid()
MARK = re.compile(r"agent (\d+) turn (\d+)")


def append(name, line):
    with open(os.path.join(work, name), "a") as out:
        out.write(line + "\n")


@llmos.tool(sends_data=False)  # it appends to a local file, and sends nothing out
def ledger(agent: int, turn: int) -> str:
    """Note that this call ran (the crash loop's tool)."""
    append("tools.log", f"{agent} {turn} {PID}")
    return "noted"


class Ledgered:
    """The model driver, noting each generation it is asked for."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prepare(self, job):
        text = " ".join(m.content for m in job.messages or ()) if job.prompt is None else job.prompt
        found = MARK.findall(text)
        if found:
            append("generations.log", f"{found[-1][0]} {found[-1][1]} {PID}")
        return self.inner.prepare(job)


class AckConsole:
    def write(self, pid, text):
        with open(os.path.join(work, "acks.log"), "a") as out:
            out.write(text)

    async def ask(self, pid, question):
        raise RuntimeError("nobody answers in a crash loop")


async def main():
    driver = FakeDriver(step_delay_s=config["step_delay_s"]) if config["model"] is None \
        else llmos.load_model(config["model"]).driver
    async with llmos.boot(Ledgered(driver), mcp_servers=None, tools=[ledger]) as kernel:
        kernel.console = AckConsole()
        store = await kernel.memory.store()  # warm: the embedding model loads once per kernel, in seconds
        await store.query("warm-up", "warm up", 1)
        marker = os.path.join(work, "spawned")
        if not os.path.exists(marker):
            for agent in range(config["agents"]):
                await kernel.spawn(config["app"], agent, config["turns"], name=f"agent{agent}", durable=True,
                                   caps={"model.generate", "tool.ledger", "memory", "console"})
            open(marker, "w").close()
        ready = False
        while True:  # READY once every unfinished agent runs here (resumed ones come through DBOS's queue)
            infos = await kernel.durability.list()
            if not ready and all(info.state.finished or info.pid is not None for info in infos):
                print("READY", flush=True)
                ready = True
            if infos and all(info.state.finished for info in infos):
                print("DONE", json.dumps([[i.name, i.state.value] for i in infos]), flush=True)
                return
            await anyio.sleep(0.1)

anyio.run(main)
'''


@dataclass
class Rerun:
    total: int = 0  # executions
    distinct: int = 0  # (agent, turn) pairs executed
    killed_inside: int = 0  # run again because the kernel died while it ran (not yet recorded)
    again: int = 0  # run again though a kernel had recorded it: should be 0


@dataclass
class CrashReport:
    cycles: int
    agents: int
    turns: int
    kill_delays_s: list[float] = field(default_factory=list)
    processes_ok: int = 0
    processes_lost: int = 0
    writes_acknowledged: int = 0
    writes_lost: int = 0
    writes_duplicated: int = 0
    generations: Rerun = field(default_factory=Rerun)
    tool_calls: Rerun = field(default_factory=Rerun)
    working_kernels: int = 0  # kernels (killed ones and the last) that generated something: kills came mid-work
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def crash_loop(home: Path, work: Path, *, cycles: int, agents: int, turns: int, model: str | None = None,
               step_delay_s: float = 0.02, kill_after_s: tuple[float, float] = (0.2, 2.0), seed: int = 0,
               cycle_timeout_s: float = 120.0, final_timeout_s: float = 600.0) -> CrashReport:
    """Run the loop in LLMOS_HOME `home`, keeping ledgers in `work`; see the module's docstring.
    `model`: None for llmos.testing.FakeDriver (each token `step_delay_s`), else a model name."""
    work.mkdir(parents=True, exist_ok=True)
    app = work / "agent.py"
    app.write_text(AGENT_APP)
    config = json.dumps({"work": str(work), "app": f"{app}:main", "agents": agents, "turns": turns, "model": model,
                         "step_delay_s": step_delay_s})
    env = {**os.environ, "LLMOS_HOME": str(home)}
    rng = random.Random(seed)
    report = CrashReport(cycles=cycles, agents=agents, turns=turns)
    began = time.monotonic()
    for _ in range(cycles):
        kernel = _start(config, env, work)
        try:
            _wait_for(kernel, "READY", cycle_timeout_s)
            delay = rng.uniform(*kill_after_s)
            time.sleep(delay)
            report.kill_delays_s.append(round(delay, 3))
        finally:
            kernel.send_signal(signal.SIGKILL)
            kernel.wait()
    kernel = _start(config, env, work)
    try:
        _wait_for(kernel, "DONE", final_timeout_s)
    finally:
        kernel.send_signal(signal.SIGTERM)
        kernel.wait(timeout=30)
    report.wall_s = time.monotonic() - began
    _count(report, home, work)
    return report


def _start(config: str, env: dict[str, str], work: Path) -> subprocess.Popen[bytes]:
    with open(work / "kernels.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-c", KERNEL, config], stdout=subprocess.PIPE, stderr=log, env=env)


def _wait_for(kernel: subprocess.Popen[bytes], word: str, timeout: float) -> None:
    """Until the kernel prints `word` (it says READY once its agents run, DONE once they ended)."""
    assert kernel.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    while word.encode() not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {word} from the kernel within {timeout} s")
        ready, _, _ = select.select([kernel.stdout], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(kernel.stdout.fileno(), 65536)
            if not chunk and kernel.poll() is not None:
                raise RuntimeError(f"the kernel ended (status {kernel.returncode}) before {word}: {seen[-2000:]!r}")
            seen += chunk


def _count(report: CrashReport, home: Path, work: Path) -> None:
    import chromadb

    statuses = _final_statuses(home)
    report.processes_ok = sum(1 for state, result in statuses if state == "exited" and result == report.turns)
    report.processes_lost = report.agents - report.processes_ok
    acked = {tuple(line.split()[1:3]) for line in _lines(work / "acks.log") if line.startswith("ack ")}
    client = chromadb.PersistentClient(path=str(home / "memory"))
    stored: list[tuple[str, str]] = []
    for collection in client.list_collections():
        for text in collection.get()["documents"]:
            words = text.split()
            if words[:1] == ["agent"] and words[2:3] == ["fact"]:
                stored.append((words[1], words[3]))
    report.writes_acknowledged = len(acked)
    report.writes_lost = len(acked - set(stored))
    report.writes_duplicated = len(stored) - len(set(stored))
    report.generations = _reruns(_lines(work / "generations.log"))
    report.working_kernels = len({line.split()[2] for line in _lines(work / "generations.log")})
    report.tool_calls = _reruns(_lines(work / "tools.log"))


def _final_statuses(home: Path) -> list[tuple[str, Any]]:
    """(state, result) of every durable process of `home`, from a kernel that resumes nothing."""
    import anyio

    import llmos

    async def statuses() -> list[tuple[str, Any]]:
        async with llmos.boot(None, memory=None, mcp_servers=None, embedder=None, resume=False) as kernel:
            found = []
            for info in await kernel.durability.list():
                status = await kernel.durability.wait(info.id, timeout=10) if info.state.finished else None
                found.append((info.state.value, None if status is None else status.result))
            return found

    previous = os.environ.get("LLMOS_HOME")
    os.environ["LLMOS_HOME"] = str(home)
    try:
        return anyio.run(statuses)
    finally:
        if previous is None:
            del os.environ["LLMOS_HOME"]
        else:
            os.environ["LLMOS_HOME"] = previous


def _reruns(lines: list[str]) -> Rerun:
    """Executions per (agent, turn), and which repeats a kill explains: the execution a killed
    kernel was inside is the last one that kernel started for that agent."""
    runs: dict[tuple[str, str], list[str]] = defaultdict(list)
    last_of: dict[tuple[str, str], tuple[str, str]] = {}  # (agent, kernel) -> its last (agent, turn)
    for line in lines:
        agent, turn, kernel = line.split()
        runs[(agent, turn)].append(kernel)
        last_of[(agent, kernel)] = (agent, turn)
    rerun = Rerun(total=len(lines), distinct=len(runs))
    for (agent, turn), kernels in runs.items():
        for kernel in kernels[:-1]:  # every execution but the one that was recorded
            if last_of[(agent, kernel)] == (agent, turn):
                rerun.killed_inside += 1
            else:
                rerun.again += 1
    return rerun


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
