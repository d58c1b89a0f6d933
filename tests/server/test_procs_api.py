"""The process API (/v1/processes) over a real server on loopback (uvicorn in the test's
event loop, over the scripted FakeDriver), through the daemon's own client
(llmos.server.client) and, for what a client would not send, raw httpx."""

from __future__ import annotations

import json
import subprocess
import sys as python
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from llmos.server import console as daemon_console
from llmos.server.client import (
    AuthenticationError, DaemonClient, DaemonUnreachable, Exited, Question, Text, find_daemon, relay)
from llmos.syscalls import (
    InvalidRequest, InvalidState, NoConsole, NoSuchProcess, PermissionDenied, ProcState, Sys, Timeout)
from llmos.testing import FakeDriver, ScriptedConsole, free_port, served, until, until_state

HERE = __file__


@asynccontextmanager
async def daemon(driver: FakeDriver | None = None, **options: Any) -> AsyncIterator[Any]:
    """A served daemon with a DaemonClient on it as `.client`, and raw httpx as `.http`."""
    async with served(driver or FakeDriver(), **options) as srv, DaemonClient(srv.url, srv.key) as client, \
            httpx.AsyncClient(base_url=srv.url) as http:
        srv.client, srv.http = client, http
        yield srv


# -- apps the tests spawn by reference ("this file:attr") -------------------------------------------
async def greet(sys: Sys, who: str, greeting: str = "hello") -> dict[str, Any]:
    await sys.write(f"{greeting}, {who}\n")
    reply = await sys.chat(f"hi from {who}")
    await sys.write(reply.text)
    return {"reply": reply.text, "pid": sys.pid}


async def wait_for_mail(sys: Sys) -> str:
    await sys.write("waiting\n")
    message = await sys.recv()
    await sys.write(f"got {message.payload}\n")
    return message.payload


async def ask(sys: Sys) -> str:
    try:
        return "answer: " + await sys.ask_user("your name?")
    except NoConsole as exc:
        return f"no console: {exc.code.name}"


async def chat_without_the_right(sys: Sys) -> str:
    try:
        await sys.chat("hello")
    except PermissionDenied as exc:
        return exc.code.name
    return "chatted"


async def returns_an_object(sys: Sys) -> object:
    return object()


async def parent_of_a_child(sys: Sys) -> Any:
    kid = await sys.spawn(wait_for_mail, name="kid")
    await sys.recv()  # goes on when told
    return (await sys.wait(kid.pid, timeout=5)).result


def ref(name: str) -> str:
    return f"{HERE}:{name}"


# -- spawn, wait, output -----------------------------------------------------------------------
async def test_spawn_by_reference_with_args_and_kwargs_then_follow_its_output_to_its_exit():
    async with daemon() as srv:
        info = await srv.client.spawn(ref("greet"), ["ada"], {"greeting": "hey"})
        assert info.name == "greet" and info.ppid == (await srv.client.health())["daemon_pid"]
        events = [event async for event in srv.client.output(info.pid)]
        assert "".join(e.text for e in events if isinstance(e, Text)) == "hey, ada\necho: hi from ada"
        assert isinstance(events[-1], Exited)
        assert events[-1].status.state is ProcState.EXITED
        assert events[-1].status.result == {"reply": "echo: hi from ada", "pid": info.pid}
        # Following to the end reaped it (and the process that waited for it to end is gone
        # too); `wait` still says how it ended.
        await until(lambda: [p.name for p in srv.kernel.ps(include_ended=True)] == ["llmosd"])
        assert (await srv.client.wait(info.pid)).result["reply"] == "echo: hi from ada"


async def test_spawn_a_registered_app_by_name_with_keyword_arguments():
    driver = FakeDriver()
    driver.enqueue("once upon a time there was")
    async with daemon(driver) as srv:
        info = await srv.client.spawn("generate", ["Once"], {"max_tokens": 3})
        assert info.name == "generate"
        status = await srv.client.wait(info.pid, timeout=10)
        assert status.state is ProcState.EXITED and status.result == "once upon a"
        assert driver.jobs[-1].sampling.max_tokens == 3


async def test_output_is_live_and_replays_what_came_before():
    async with daemon() as srv:
        info = await srv.client.spawn(ref("wait_for_mail"))
        await until_state(srv.kernel, info.pid, ProcState.BLOCKED)
        seen: list[Any] = []
        async for event in srv.client.output(info.pid):
            seen.append(event)
            if event == Text("waiting\n"):  # replayed: written before we came; it still waits
                srv.kernel.send(info.pid, "mail")
        assert seen[:2] == [Text("waiting\n"), Text("got mail\n")]
        assert isinstance(seen[2], Exited) and seen[2].status.result == "mail"


async def test_following_another_process_child_leaves_it_for_its_parent_to_reap():
    async with daemon() as srv:
        parent = await srv.client.spawn(ref("parent_of_a_child"))
        await until(lambda: "kid" in [p.name for p in srv.kernel.ps()])
        kid = next(p for p in srv.kernel.ps() if p.name == "kid")
        seen = []
        async for event in srv.client.output(kid.pid):
            seen.append(event)
            if event == Text("waiting\n"):
                srv.kernel.send(kid.pid, "for the kid")
        assert isinstance(seen[-1], Exited) and seen[-1].status.state is ProcState.EXITED
        assert seen[-1].status.result is None  # not reaped here, so its result is not ours to read
        srv.kernel.send(parent.pid, "go on")
        assert (await srv.client.wait(parent.pid, timeout=5)).result == "for the kid"


async def test_a_result_json_cannot_carry_comes_back_as_its_repr():
    async with daemon() as srv:
        info = await srv.client.spawn(ref("returns_an_object"))
        status = await srv.client.wait(info.pid, timeout=5)
        assert status.state is ProcState.EXITED and status.result.startswith("<object object at")


async def test_wait_with_a_timeout_is_a_504_and_a_Timeout_on_the_client():
    async with daemon() as srv:
        info = await srv.client.spawn(ref("wait_for_mail"))
        with pytest.raises(Timeout):
            await srv.client.wait(info.pid, timeout=0.05)
        response = await srv.http.post(f"/v1/processes/{info.pid}/wait", params={"timeout": 0})
        assert response.status_code == 504 and response.json()["error"]["llmos_error"] == "Timeout"
        await srv.client.kill(info.pid)


# -- questions -------------------------------------------------------------------------------------
async def test_a_question_shows_in_the_output_and_the_answer_comes_back():
    async with daemon() as srv:
        info = await srv.client.spawn(ref("ask"))
        events = []
        async for event in srv.client.output(info.pid):
            events.append(event)
            if isinstance(event, Question):
                assert event.text == "your name?"
                await srv.client.answer(info.pid, "ada", event.id)
        assert events[-1].status.result == "answer: ada"


async def test_the_registered_chat_app_converses_over_http_until_exit():
    async with daemon() as srv:
        info = await srv.client.spawn("chat")
        answers = iter(["hello there", "/exit"])
        text = []
        async for event in srv.client.output(info.pid):
            if isinstance(event, Question):
                await srv.client.answer(info.pid, next(answers))
            elif isinstance(event, Text):
                text.append(event.text)
        assert "echo: hello there" in "".join(text)
        assert event.status.state is ProcState.EXITED


async def test_relay_plays_a_process_on_a_console_as_a_terminal_would():
    async with daemon() as srv:
        info = await srv.client.spawn("chat")
        console = ScriptedConsole("what is up?")  # then no more answers: end of input
        status = await relay(srv.client, info.pid, console)
        assert status.state is ProcState.EXITED
        assert console.questions == [(info.pid, "you> ")] * 2
        assert "echo: what is up?" in console.text


async def test_a_client_that_cannot_answer_fails_the_question_with_NoConsole():
    async with daemon() as srv:
        info = await srv.client.spawn(ref("ask"))
        async for event in srv.client.output(info.pid):
            if isinstance(event, Question):
                await srv.client.answer(info.pid, None, event.id)
        assert event.status.result == "no console: ENOTTY"


async def test_a_question_nobody_follows_fails_with_NoConsole(monkeypatch):
    monkeypatch.setattr(daemon_console, "UNATTENDED_ASK_S", 0.05)
    async with daemon() as srv:
        info = await srv.client.spawn(ref("ask"))
        assert (await srv.client.wait(info.pid, timeout=5)).result == "no console: ENOTTY"
        with pytest.raises(InvalidState):  # nothing is open to answer
            await srv.client.answer(info.pid, "late")


# -- control ---------------------------------------------------------------------------------------
async def test_ps_get_suspend_resume_nice_kill():
    async with daemon() as srv:
        info = await srv.client.spawn(ref("wait_for_mail"), name="mailman")
        await until_state(srv.kernel, info.pid, ProcState.BLOCKED)
        assert [p.name for p in await srv.client.ps()] == ["llmosd", "mailman"]
        assert (await srv.client.get(info.pid)).state is ProcState.BLOCKED
        assert (await srv.client.suspend(info.pid)).state is ProcState.SUSPENDED
        with pytest.raises(InvalidState):
            await srv.client.suspend(info.pid)
        assert (await srv.client.resume(info.pid)).state is ProcState.BLOCKED
        assert (await srv.client.nice(info.pid, 5)).priority == 5
        await srv.client.kill(info.pid, "enough")
        status = await srv.client.wait(info.pid, timeout=5)
        assert (status.state, status.reason) == (ProcState.KILLED, "enough")
        ended = await srv.client.spawn(ref("returns_an_object"))
        await until_state(srv.kernel, ended.pid)
        assert ended.pid in [p.pid for p in await srv.client.ps(include_ended=True)]  # ended, not reaped yet
        assert ended.pid not in [p.pid for p in await srv.client.ps()]


async def test_trace_lists_the_process_syscalls():
    async with daemon() as srv:
        info = await srv.client.spawn(ref("greet"), ["bob"])
        await srv.client.wait(info.pid, timeout=5)
        trace = await srv.client.trace(info.pid)
        assert [(e.call, e.outcome) for e in trace] == [("write", "ok"), ("chat", "ok"), ("write", "ok")]
        raw = (await srv.http.get(f"/v1/processes/{info.pid}/trace")).json()
        assert raw["object"] == "list" and set(raw["data"][0]) == {"at", "pid", "call", "duration_s", "outcome"}


async def test_every_action_is_a_traced_syscall_of_llmosd():
    async with daemon() as srv:
        info = await srv.client.spawn(ref("wait_for_mail"))
        await srv.client.kill(info.pid)
        daemon_pid = (await srv.client.health())["daemon_pid"]
        calls = [e.call for e in srv.kernel.trace if e.pid == daemon_pid]
        assert calls[:3] == ["spawn", "kill", "ps"]


async def test_caps_are_what_the_client_asks_for_never_more():
    async with daemon() as srv:
        info = await srv.client.spawn(ref("chat_without_the_right"), caps=["console"])
        assert info.capabilities == frozenset({"console"})
        assert (await srv.client.wait(info.pid, timeout=5)).result == "EPERM"
        default = await srv.client.spawn(ref("greet"), ["x"])
        assert "model.generate" in default.capabilities and "proc.admin" not in default.capabilities


# -- errors --------------------------------------------------------------------------------------
async def test_a_missing_pid_is_a_404_and_NoSuchProcess_on_the_client():
    async with daemon() as srv:
        for call in (srv.client.get(999), srv.client.wait(999), srv.client.kill(999), srv.client.nice(999, 1)):
            with pytest.raises(NoSuchProcess):
                await call
        assert await srv.client.trace(999) == []  # a trace outlives its process: none is no error
        response = await srv.http.get("/v1/processes/999")
        assert response.status_code == 404
        assert response.json()["error"]["llmos_error"] == "NoSuchProcess"
        with pytest.raises(NoSuchProcess):
            [event async for event in srv.client.output(999)]


async def test_bad_spawns_are_400s_that_say_what_is_wrong():
    async with daemon() as srv:
        with pytest.raises(InvalidRequest, match="no_such_module"):
            await srv.client.spawn("no_such_module:main")
        with pytest.raises(InvalidRequest, match="unexpected keyword argument 'colour'"):
            await srv.client.spawn(ref("greet"), ["x"], {"colour": "red"})
        with pytest.raises(InvalidRequest, match="missing a required argument"):
            await srv.client.spawn(ref("greet"))
        response = await srv.http.post("/v1/processes", json={"args": []})
        assert response.status_code == 400 and response.json()["error"]["param"] == "app"
        response = await srv.http.post("/v1/processes", json={"app": ref("greet"), "args": ["x"],
                                                                        "priority": 99})
        assert response.status_code == 400 and response.json()["error"]["llmos_error"] == "InvalidRequest"


async def test_llmosd_cannot_be_killed_over_its_own_api():
    async with daemon() as srv:
        with pytest.raises(PermissionDenied, match="llmosd"):
            await srv.client.kill((await srv.client.health())["daemon_pid"])


async def test_a_wrong_key_is_an_AuthenticationError_and_no_daemon_is_DaemonUnreachable():
    async with served(FakeDriver(), api_key="sesame") as srv:
        with pytest.raises(AuthenticationError):
            await DaemonClient(srv.url, "wrong").ps()
        assert [p.name for p in await DaemonClient(srv.url, "sesame").ps()] == ["llmosd"]
        with pytest.raises(AuthenticationError):
            await anyio.to_thread.run_sync(lambda: find_daemon(srv.url, "wrong", timeout=2))
        found = await anyio.to_thread.run_sync(lambda: find_daemon(srv.url, "sesame", timeout=2))
        assert found is not None and found.url == srv.url
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DaemonUnreachable, match="llmos serve"):
        await DaemonClient(closed, None).ps()
    assert find_daemon(closed, None) is None


def test_the_client_module_loads_no_web_framework_and_no_torch():
    code = ("import json, sys\nimport llmos.server.client\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'fastapi', 'starlette', 'uvicorn', 'chromadb'))))")
    out = subprocess.run([python.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
