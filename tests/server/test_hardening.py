"""What the review of the daemon found, each kept fixed: the daemon's process cannot be
killed, an API-key holder's sessions cannot start files without `proc.exec`, a client that
hangs up stops its work, a warm daemon runs the code as it is now, output outlives reaping,
and every bad request is a 4xx in OpenAI's error shape."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from llmos.server.client import run_remote
from llmos.syscalls import NoSuchProcess, PermissionDenied, ProcState, Sys
from llmos.testing import FakeDriver, served, until

USER = [{"role": "user", "content": "hi"}]


async def test_no_session_may_kill_suspend_or_renice_the_daemon_process():
    async def attack(sys: Sys) -> list[str]:
        outcomes = []
        for call in (sys.kill(1), sys.suspend(1), sys.nice(5, 1)):
            try:
                await call
                outcomes.append("done")
            except PermissionDenied as exc:
                outcomes.append(str(exc))
        return outcomes

    async with served() as srv:
        status = await run_remote(srv.url, attack, caps=["*"])
        assert status.state is ProcState.EXITED
        assert all("protected" in outcome for outcome in status.result), status.result
        assert srv.kernel.procs.get(1).state is ProcState.RUNNING
        async with httpx.AsyncClient(base_url=srv.url) as http:
            assert (await http.post("/v1/processes/1/nice", json={"priority": 5})).status_code == 403


async def test_a_process_that_ended_can_make_no_more_syscalls():
    async with served() as srv:
        kept: list[Sys] = []

        async def leaks_its_handle(sys: Sys) -> None:
            kept.append(sys)

        proc = await srv.kernel.spawn(leaks_its_handle)
        await srv.kernel.wait(proc.pid)
        with pytest.raises(NoSuchProcess, match="has ended"):
            await kept[0].ps()


async def test_a_client_that_leaves_a_non_streamed_request_kills_its_process():
    driver = FakeDriver(lambda prompt: "w " * 500, step_delay_s=0.02)
    async with served(driver) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=0.5) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post("/v1/chat/completions", json={"model": "fake", "messages": USER})
        await until(lambda: [p.name for p in srv.kernel.ps(include_ended=True)] == ["llmosd"], timeout=5)
        await until(lambda: not srv.kernel.generation.jobs, timeout=5)  # its generation stopped with it


async def test_a_warm_daemon_runs_an_app_file_as_it_is_now(tmp_path: Path):
    app = tmp_path / "app.py"
    app.write_text("async def main(sys):\n    return 1\n")
    async with served() as srv, httpx.AsyncClient(base_url=srv.url) as http:
        async def run() -> object:
            pid = (await http.post("/v1/processes", json={"app": f"{app}:main"})).json()["pid"]
            return (await http.post(f"/v1/processes/{pid}/wait")).json()["result"]

        assert await run() == 1
        app.write_text("async def main(sys):\n    return 2  # edited\n")
        assert await run() == 2


async def test_the_output_of_a_process_reaped_by_its_parent_is_still_replayed_and_ends():
    async def child(sys: Sys) -> None:
        await sys.write("from the child\n")

    async with served() as srv, httpx.AsyncClient(base_url=srv.url, timeout=10) as http:
        proc = await srv.kernel.spawn(child)
        await srv.kernel.wait(proc.pid)  # reaped by its parent (here the kernel) before anyone followed
        logs = await http.get(f"/v1/processes/{proc.pid}/logs")
        with anyio.fail_after(5):
            output = await http.get(f"/v1/processes/{proc.pid}/output")
    assert logs.json()["text"] == "from the child\n"
    assert '"text": "from the child\\n"' in output.text  # replayed, then the stream ended


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": USER, "seed": 2**64}, "seed"),
    ({"messages": USER, "tools": [], "tool_choice": "required"}, "tool_choice"),
])
async def test_out_of_range_values_are_400s(body, param):
    async with served() as srv, httpx.AsyncClient(base_url=srv.url) as http:
        answer = await http.post("/v1/chat/completions", json={"model": "fake", **body})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


async def test_too_many_prompts_or_inputs_are_400s():
    async with served() as srv, httpx.AsyncClient(base_url=srv.url) as http:
        answer = await http.post("/v1/completions", json={"model": "fake", "prompt": ["x"] * 2049})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "prompt"


async def test_unknown_routes_and_non_json_bodies_answer_in_openai_shape():
    async with served() as srv, httpx.AsyncClient(base_url=srv.url) as http:
        missing = await http.get("/v1/nothing-here")
        wrong_method = await http.get("/v1/chat/completions")
        not_json = await http.post("/v1/chat/completions", content=b"model=fake",
                                   headers={"content-type": "text/plain"})
    assert missing.status_code == 404 and "no route GET /v1/nothing-here" in missing.json()["error"]["message"]
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "server_error"
    assert not_json.status_code == 400 and "must be a JSON object" in not_json.json()["error"]["message"]


async def test_a_request_killed_from_ps_tells_clients_not_to_retry_it():
    driver = FakeDriver(lambda prompt: "w " * 300, step_delay_s=0.02)
    async with served(driver) as srv, httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
        answers: list[httpx.Response] = []

        async def ask() -> None:
            answers.append(await http.post("/v1/chat/completions", json={"model": "fake", "messages": USER}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await until(lambda: any(p.name == "openai.chat" for p in srv.kernel.ps()), timeout=5)
            srv.kernel.kill(next(p.pid for p in srv.kernel.ps() if p.name == "openai.chat"), "from ps")
    assert answers[0].status_code == 503 and answers[0].headers["x-should-retry"] == "false"
    assert "from ps" in answers[0].json()["error"]["message"]


async def test_without_a_key_only_loopback_host_names_are_answered():
    async with served() as srv, httpx.AsyncClient(base_url=srv.url) as http:
        rebound = await http.get("/v1/models", headers={"host": "attacker.example"})
        local = await http.get("/v1/models", headers={"host": "localhost"})
    assert rebound.status_code == 400 and local.status_code == 200


async def test_the_daemon_reaps_what_the_api_started_and_nobody_collected(monkeypatch):
    from llmos.server import procs_api

    monkeypatch.setattr(procs_api, "ZOMBIE_GRACE_S", 0.0)
    monkeypatch.setattr(procs_api, "REAP_INTERVAL_S", 0.05)
    async with served() as srv, httpx.AsyncClient(base_url=srv.url) as http:
        pid = (await http.post("/v1/processes", json={"app": "llmos.apps.seed.text:generate",
                                                      "args": ["hi"]})).json()["pid"]
        await until(lambda: pid not in {p.pid for p in srv.kernel.ps(include_ended=True)}, timeout=5)
        late = await http.post(f"/v1/processes/{pid}/wait")  # its status was kept for a late wait
    assert late.status_code == 200 and ProcState(late.json()["state"]) is ProcState.EXITED
