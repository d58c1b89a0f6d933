"""Durable processes over HTTP: `"durable": true` (and `"restart"`) in POST /v1/processes,
and /v1/durable[/ID[/wait|/resume|/cancel]], over a real server on loopback (uvicorn in
the test's event loop, over the scripted FakeDriver), through raw httpx and through the
daemon's own client (llmos.server.client.DaemonClient).

A durable process's app must be importable by reference, so each app here is a .py file
written into the test's tmp_path and named "/abs/path/app.py:main". One daemon at a time:
DBOS is one instance per Python process."""

from __future__ import annotations

import re
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmos import plugins
from llmos.server.client import DaemonClient
from llmos.syscalls import (
    DurableState, InvalidRequest, InvalidState, NoSuchDurableProcess, ProcState, RestartPolicy, Timeout)
from llmos.testing import FakeDriver, served, until_async

# Writes a greeting, asks the model once, makes `n` more syscalls: 2 + n recorded steps.
GREETER = """
async def main(sys, who, n=2):
    await sys.write(f"hello, {who}\\n")
    reply = await sys.chat(f"hi from {who}")
    for _ in range(n):
        await sys.sleep(0)
    return {"reply": reply.text, "who": who}
"""

# Sleeps `rounds` times (one syscall each), then says how many rounds it made.
SLEEPER = """
async def main(sys, rounds, seconds=0.05):
    for _ in range(rounds):
        await sys.sleep(seconds)
    return rounds
"""

# Each run appends a line to `runs` (outside any syscall: every run makes it), makes one
# syscall, and fails.
FAILER = """
async def main(sys, runs):
    with open(runs, "a") as out:
        out.write("run\\n")
    n = sum(1 for _ in open(runs))
    await sys.sleep(0)
    raise RuntimeError(f"boom {n}")
"""

DURABLE_ID = re.compile(r"[0-9a-f]{12}")


def write_app(folder: Path, name: str, source: str) -> str:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return f"{path}:main"


@asynccontextmanager
async def daemon(driver: FakeDriver | None = None, **options: Any) -> AsyncIterator[Any]:
    """A served daemon with a DaemonClient on it as `.client`, and raw httpx as `.http`."""
    async with served(driver or FakeDriver(), **options) as srv, DaemonClient(srv.url, srv.key) as client, \
            httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
        srv.client, srv.http = client, http
        yield srv


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI-shaped error of an answer: {"message", "type", "param", "code", ...}."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


async def steps_at_least(srv: Any, durable_id: str, n: int) -> None:
    async def reached() -> bool:
        return (await srv.client.durable_info(durable_id)).steps >= n

    await until_async(reached, timeout=15)


# -- spawn, list, describe, wait -----------------------------------------------------------------
async def test_a_durable_spawn_over_http_runs_and_is_listed_described_and_waited_for(tmp_path):
    ref = write_app(tmp_path, "greeter", GREETER)
    async with daemon() as srv:
        daemon_pid = (await srv.client.health())["daemon_pid"]
        response = await srv.http.post("/v1/processes", json={"app": ref, "args": ["ada"], "durable": True})
        assert response.status_code == 201, response.text
        info = response.json()
        durable_id = info["durable_id"]
        assert DURABLE_ID.fullmatch(durable_id or ""), info
        assert info["name"] == "main" and info["ppid"] == daemon_pid and info["pid"] > 0

        waited = await srv.http.post(f"/v1/durable/{durable_id}/wait", params={"timeout": 20})
        assert waited.status_code == 200, waited.text
        status = waited.json()
        assert status["state"] == ProcState.EXITED and status["reason"] is None
        assert status["result"] == {"reply": "echo: hi from ada", "who": "ada"}
        assert status["pid"] == info["pid"] and status["name"] == "main"

        listing = await srv.http.get("/v1/durable")
        assert listing.status_code == 200
        assert listing.json()["object"] == "list"
        [listed] = listing.json()["data"]
        described = await srv.http.get(f"/v1/durable/{durable_id}")
        assert described.status_code == 200
        # A second wait still says how it ended (the record is the durable database's).
        again = await srv.http.post(f"/v1/durable/{durable_id}/wait")
        assert again.status_code == 200 and again.json()["result"] == status["result"]
    assert listed["id"] == durable_id
    assert listed["state"] == "exited"
    assert listed["app"] == ref and listed["name"] == "main"
    assert listed["steps"] == 1 + 1 + 2  # write, chat, two sleeps
    assert listed["restarts"] == 0
    assert isinstance(listed["kernel"], str) and listed["kernel"]
    assert listed["kernel_url"] is None  # not a cluster: no kernel advertises an API
    assert listed["pid"] is None  # ended: no kernel runs it
    assert described.json() == listed


async def test_a_running_one_times_out_refuses_resume_and_is_cancelled_once(tmp_path):
    ref = write_app(tmp_path, "sleeper", SLEEPER)
    async with daemon() as srv:
        info = (await srv.http.post("/v1/processes", json={"app": ref, "args": [400], "durable": True})).json()
        durable_id = info["durable_id"]
        await steps_at_least(srv, durable_id, 1)

        running = (await srv.http.get(f"/v1/durable/{durable_id}")).json()
        assert running["state"] == "running" and running["pid"] == info["pid"]
        assert running["kernel_url"] is None

        timed_out = await srv.http.post(f"/v1/durable/{durable_id}/wait", params={"timeout": 0.1})
        assert timed_out.status_code == 504
        assert error_of(timed_out)["llmos_error"] == "Timeout" and error_of(timed_out)["code"] == "ETIMEDOUT"

        refused = await srv.http.post(f"/v1/durable/{durable_id}/resume")
        assert refused.status_code == 400  # InvalidState is EINVAL (server/errors.py STATUS)
        assert error_of(refused)["llmos_error"] == "InvalidState"
        assert "running" in error_of(refused)["message"]

        cancelled = await srv.http.post(f"/v1/durable/{durable_id}/cancel", json={"reason": "enough"})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "cancelled"
        status = (await srv.http.post(f"/v1/durable/{durable_id}/wait", params={"timeout": 10})).json()
        assert status["state"] == ProcState.KILLED and status["reason"] == "cancelled"

        twice = await srv.http.post(f"/v1/durable/{durable_id}/cancel")
        assert twice.status_code == 400
        assert error_of(twice)["llmos_error"] == "InvalidState" and "ended" in error_of(twice)["message"]
        # The process the API started ended KILLED, with the reason given.
        ended = (await srv.http.post(f"/v1/processes/{info['pid']}/wait", params={"timeout": 10})).json()
        assert ended["state"] == ProcState.KILLED and ended["reason"] == "enough"


async def test_cancel_without_a_body_and_with_a_bad_one(tmp_path):
    ref = write_app(tmp_path, "sleeper", SLEEPER)
    async with daemon() as srv:
        durable_id = (await srv.http.post("/v1/processes", json={"app": ref, "args": [400], "durable": True})
                      ).json()["durable_id"]
        bad = await srv.http.post(f"/v1/durable/{durable_id}/cancel", json={"why": "no such field"})
        assert bad.status_code == 400 and error_of(bad)["param"] == "why"
        assert (await srv.http.get(f"/v1/durable/{durable_id}")).json()["state"] == "running"
        bare = await srv.http.post(f"/v1/durable/{durable_id}/cancel")
        assert bare.status_code == 200 and bare.json()["state"] == "cancelled"


# -- ids the API does not know, or cannot be ids ---------------------------------------------------
ROUTES = [("GET", ""), ("POST", "/wait"), ("POST", "/resume"), ("POST", "/cancel")]


async def test_an_unknown_id_is_a_404_on_every_route():
    async with daemon() as srv:
        for method, tail in ROUTES:
            response = await srv.http.request(method, f"/v1/durable/0123456789ab{tail}")
            assert response.status_code == 404, (method, tail, response.text)
            error = error_of(response)
            assert error["type"] == "not_found_error" and error["code"] == "ESRCH"
            assert error["llmos_error"] == "NoSuchDurableProcess" and "0123456789ab" in error["message"]
        assert (await srv.http.get("/v1/durable")).json() == {"object": "list", "data": []}


@pytest.mark.parametrize("bad_id", ["XYZ", "0123456789AB", "a" * 65, "12-34"])
async def test_a_malformed_id_is_a_400_naming_the_path_parameter(bad_id):
    async with daemon() as srv:
        for method, tail in ROUTES:
            response = await srv.http.request(method, f"/v1/durable/{bad_id}{tail}")
            assert response.status_code == 400, (method, tail, response.text)
            error = error_of(response)
            assert error["type"] == "invalid_request_error" and error["param"] == "durable_id"
            assert error["message"].startswith("durable_id: ")


# -- supervision over HTTP -------------------------------------------------------------------------
async def test_a_restart_policy_in_the_spawn_body_restarts_a_failing_app_once(tmp_path):
    ref = write_app(tmp_path, "failer", FAILER)
    runs = tmp_path / "runs.txt"
    async with daemon() as srv:
        response = await srv.http.post("/v1/processes", json={
            "app": ref, "args": [str(runs)], "restart": {"restart": "on-failure", "max_restarts": 1}})
        assert response.status_code == 201, response.text
        durable_id = response.json()["durable_id"]
        assert DURABLE_ID.fullmatch(durable_id or "")  # supervision makes it durable
        status = (await srv.http.post(f"/v1/durable/{durable_id}/wait", params={"timeout": 20})).json()
        described = (await srv.http.get(f"/v1/durable/{durable_id}")).json()
    assert runs.read_text().splitlines() == ["run", "run"]  # the first run and one restart
    assert status["state"] == ProcState.FAILED
    assert status["reason"] == "restarted 1 times within 60 s, and ended again: RuntimeError: boom 2"
    assert described["state"] == "failed" and described["restarts"] == 1


@pytest.mark.parametrize(("restart", "param"), [
    ({"restart": "sometimes"}, "restart.restart"),
    ({"restart": "always", "max_restarts": -1}, "restart.max_restarts"),
    ({"restart": "always", "within_s": 0}, "restart.within_s"),
    ({"restart": "always", "forever": True}, "restart.forever"),
    ("always", "restart"),
])
async def test_a_bad_restart_policy_is_a_400_naming_the_field(tmp_path, restart, param):
    ref = write_app(tmp_path, "sleeper", SLEEPER)
    async with daemon() as srv:
        response = await srv.http.post("/v1/processes", json={"app": ref, "args": [1], "durable": True,
                                                              "restart": restart})
        assert response.status_code == 400, response.text
        error = error_of(response)
        assert error["type"] == "invalid_request_error" and error["param"] == param
        assert error["message"].startswith(f"{param}: ")
        assert srv.kernel.ps(include_ended=True)[0].name == "llmosd" and len(srv.kernel.ps(include_ended=True)) == 1
        assert not srv.kernel.durability.started  # nothing was recorded


# -- what cannot be durable --------------------------------------------------------------------------
async def test_an_app_that_cannot_be_started_again_by_reference_is_a_400(tmp_path):
    async def local_app(sys):  # noqa: ANN001 - registered as a Python object: no reference to it
        return 1

    plugins.register_app("test-durable-api-local", local_app)
    try:
        async with daemon() as srv:
            cases = {
                "llmos.apps.workflows.agent:no_such_app": "has no attribute",
                "no_such_module_for_llmos_tests:main": "cannot import app module",
                f"{tmp_path / 'missing.py'}:main": "does not exist",
                "test-durable-api-local": "importable by reference",
            }
            for app, message in cases.items():
                response = await srv.http.post("/v1/processes", json={"app": app, "durable": True})
                assert response.status_code == 400, (app, response.text)
                error = error_of(response)
                assert error["llmos_error"] == "InvalidRequest" and message in error["message"], (app, error)
            # The same registered object runs as an ordinary process: only durability needs a reference.
            ordinary = await srv.http.post("/v1/processes", json={"app": "test-durable-api-local"})
            assert ordinary.status_code == 201
            status = await srv.client.wait(ordinary.json()["pid"], timeout=10)
            assert status.result == 1
            assert (await srv.http.get("/v1/durable")).json()["data"] == []
    finally:
        plugins.APPS.pop("test-durable-api-local", None)


async def test_a_registered_app_by_name_runs_durably_under_its_reference():
    driver = FakeDriver()
    driver.enqueue("once upon a time there was")
    async with daemon(driver) as srv:
        info = await srv.client.spawn("generate", ["Once"], {"max_tokens": 3}, durable=True)
        assert info.name == "generate" and info.durable_id
        status = await srv.client.durable_wait(info.durable_id, timeout=20)
        described = await srv.client.durable_info(info.durable_id)
    assert status.state is ProcState.EXITED and status.result == "once upon a"
    assert described.app == "llmos.apps.seed.text:generate" and described.name == "generate"


# -- the daemon's client ----------------------------------------------------------------------------
async def test_the_daemon_client_round_trips_every_durable_call(tmp_path):
    sleeper = write_app(tmp_path, "sleeper", SLEEPER)
    greeter = write_app(tmp_path, "greeter", GREETER)
    async with daemon() as srv:
        done = await srv.client.spawn(greeter, ["bob"], {"n": 1}, durable=True, name="greet")
        assert done.durable_id and done.name == "greet"
        status = await srv.client.durable_wait(done.durable_id, timeout=20)
        assert status.state is ProcState.EXITED and status.result == {"reply": "echo: hi from bob", "who": "bob"}

        running = await srv.client.spawn(sleeper, [400], durable=True,
                                         restart=RestartPolicy(restart="always", max_restarts=2))
        assert running.durable_id
        await steps_at_least(srv, running.durable_id, 1)
        with pytest.raises(Timeout):
            await srv.client.durable_wait(running.durable_id, timeout=0.05)
        with pytest.raises(InvalidState):
            await srv.client.durable_resume(running.durable_id)

        listed = {d.id: d for d in await srv.client.durable_ps()}
        assert set(listed) == {done.durable_id, running.durable_id}
        assert listed[done.durable_id].state is DurableState.EXITED and listed[done.durable_id].steps == 3
        assert listed[running.durable_id].state is DurableState.RUNNING
        assert listed[running.durable_id].pid == running.pid
        assert (await srv.client.durable_info(running.durable_id)).id == running.durable_id

        cancelled = await srv.client.durable_cancel(running.durable_id, "no more")
        assert cancelled.state is DurableState.CANCELLED and cancelled.restarts == 0  # never restarted
        ended = await srv.client.durable_wait(running.durable_id, timeout=10)
        assert ended.state is ProcState.KILLED and ended.reason == "cancelled"
        with pytest.raises(InvalidState):
            await srv.client.durable_cancel(running.durable_id)

        with pytest.raises(NoSuchDurableProcess):
            await srv.client.durable_info("0123456789ab")
        with pytest.raises(NoSuchDurableProcess):
            await srv.client.durable_wait("0123456789ab")
        with pytest.raises(InvalidRequest):
            await srv.client.durable_info("NOT-AN-ID")
        with pytest.raises(InvalidRequest, match="importable by reference|has no attribute"):
            await srv.client.spawn("llmos.apps.workflows.agent:no_such_app", durable=True)


# -- left unfinished by one daemon, resumed by the next ----------------------------------------------
async def test_an_unfinished_one_is_listed_by_the_next_daemon_and_resumed_on_request(tmp_path):
    ref = write_app(tmp_path, "sleeper", SLEEPER)
    async with daemon() as srv:
        info = await srv.client.spawn(ref, [12, 0.05], durable=True)
        await steps_at_least(srv, info.durable_id, 2)
    # The daemon stopped: its durable process is not over. A daemon that does not resume at
    # boot lists it as unfinished; /resume runs it again from its record, to its end.
    async with daemon(resume=False) as srv:
        left = await srv.client.durable_info(info.durable_id)
        assert left.state is DurableState.UNFINISHED, left
        assert 2 <= left.steps < 12 and left.pid is None
        resumed = await srv.http.post(f"/v1/durable/{info.durable_id}/resume")
        assert resumed.status_code == 200, resumed.text
        # DBOS's resume re-enqueues its workflows: for a moment it may show as queued.
        assert resumed.json()["state"] in ("queued", "running", "unfinished", "exited")
        status = await srv.client.durable_wait(info.durable_id, timeout=20)
        done = await srv.client.durable_info(info.durable_id)
    assert status.state is ProcState.EXITED and status.result == 12
    assert done.state is DurableState.EXITED and done.steps == 12 and done.restarts == 0


# -- more of a durable process's life over HTTP --------------------------------------------------------
async def test_its_output_streams_as_any_process_does(tmp_path):
    from llmos.server.client import Exited, Text

    ref = write_app(tmp_path, "greeter", GREETER)
    async with daemon() as srv:
        info = await srv.client.spawn(ref, ["cy"], durable=True)
        events = [event async for event in srv.client.output(info.pid)]
        status = await srv.client.durable_wait(info.durable_id, timeout=10)
    assert "".join(e.text for e in events if isinstance(e, Text)) == "hello, cy\n"
    assert isinstance(events[-1], Exited) and events[-1].status.state is ProcState.EXITED
    assert events[-1].status.result == status.result == {"reply": "echo: hi from cy", "who": "cy"}


async def test_wait_with_a_zero_timeout_on_an_ended_one_says_how_it_ended(tmp_path):
    """As /v1/processes/{pid}/wait?timeout=0 does for an ended process: a poll, not a 504."""
    ref = write_app(tmp_path, "greeter", GREETER)
    async with daemon() as srv:
        info = await srv.client.spawn(ref, ["dee"], durable=True)
        assert (await srv.client.durable_wait(info.durable_id, timeout=10)).state is ProcState.EXITED
        ordinary = await srv.http.post(f"/v1/processes/{info.pid}/wait", params={"timeout": 0})
        assert ordinary.status_code == 200 and ordinary.json()["state"] == ProcState.EXITED
        polled = await srv.http.post(f"/v1/durable/{info.durable_id}/wait", params={"timeout": 0})
        assert polled.status_code == 200, polled.text
        assert polled.json()["result"] == {"reply": "echo: hi from dee", "who": "dee"}


async def test_a_cancelled_one_can_be_resumed_over_http_and_runs_to_its_end(tmp_path):
    ref = write_app(tmp_path, "sleeper", SLEEPER)
    async with daemon() as srv:
        info = await srv.client.spawn(ref, [20, 0.02], durable=True)
        await steps_at_least(srv, info.durable_id, 3)
        assert (await srv.client.durable_cancel(info.durable_id)).state is DurableState.CANCELLED
        assert (await srv.client.durable_wait(info.durable_id, timeout=10)).state is ProcState.KILLED
        resumed = await srv.http.post(f"/v1/durable/{info.durable_id}/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["state"] != "cancelled"
        status = await srv.client.durable_wait(info.durable_id, timeout=20)
        done = await srv.client.durable_info(info.durable_id)
    assert status.state is ProcState.EXITED and status.result == 20
    assert done.state is DurableState.EXITED and done.steps == 20


async def test_a_durable_process_killed_through_the_process_api_ends_killed_for_good(tmp_path):
    ref = write_app(tmp_path, "sleeper", SLEEPER)
    async with daemon() as srv:
        info = await srv.client.spawn(ref, [400], durable=True, restart=RestartPolicy(restart="always"))
        await steps_at_least(srv, info.durable_id, 1)
        killed = await srv.http.post(f"/v1/processes/{info.pid}/kill", json={"reason": "stop it"})
        assert killed.status_code == 200, killed.text
        status = await srv.client.durable_wait(info.durable_id, timeout=10)
        described = await srv.client.durable_info(info.durable_id)
    assert status.state is ProcState.KILLED and status.reason == "stop it"
    assert described.state is DurableState.KILLED and described.restarts == 0  # killed on purpose: not restarted


async def test_a_daemon_without_durability_refuses_durable_calls_with_enodev(tmp_path):
    ref = write_app(tmp_path, "sleeper", SLEEPER)
    async with daemon(durable=None) as srv:
        for method, path, body in [("GET", "/v1/durable", None), ("GET", "/v1/durable/0123456789ab", None),
                                   ("POST", "/v1/durable/0123456789ab/wait", None),
                                   ("POST", "/v1/processes", {"app": ref, "args": [1], "durable": True}),
                                   ("POST", "/v1/processes", {"app": ref, "args": [1],
                                                              "restart": {"restart": "always"}})]:
            response = await srv.http.request(method, path, json=body)
            assert response.status_code == 404, (path, response.text)  # ENODEV (server/errors.py STATUS)
            error = error_of(response)
            assert error["code"] == "ENODEV" and error["llmos_error"] == "DurabilityUnavailable", error
        ordinary = await srv.http.post("/v1/processes", json={"app": ref, "args": [1]})
        assert ordinary.status_code == 201 and ordinary.json()["durable_id"] is None
