"""Remote syscalls: an app runs in the test's process with a RemoteSys, and its syscalls are
served by a real daemon on loopback (uvicorn in the test's event loop, over the scripted
FakeDriver): the same code, the same results and the same typed errors as a local app, with
capabilities, quotas, `ps` and `kill` applying to the session's process in the daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from llmos.server import wire
from llmos.server.client import DaemonClient, RemoteSys, run_remote
from llmos.syscalls import (
    DEFAULT_APP_CAPS, ExitStatus, InvalidRequest, NoSuchProcess, PermissionDenied, ProcState, QuotaExceeded, Reply, Sys, SyscallError,
    TextStream)
from llmos.testing import FakeDriver, served, until, until_state

HERE = __file__


@asynccontextmanager
async def daemon(driver: FakeDriver | None = None) -> AsyncIterator[Any]:
    async with served(driver or FakeDriver()) as srv, DaemonClient(srv.url, srv.key) as client:
        srv.client = client
        yield srv


def errno_of(exc: BaseException) -> str:
    return exc.code.name if isinstance(exc, SyscallError) else type(exc).__name__


# -- apps --------------------------------------------------------------------------------------------
async def chatty(sys: Sys, question: str) -> dict[str, Any]:
    reply = await sys.chat(question)
    stream = await sys.chat("tell me more", stream=True)
    pieces = [piece async for piece in stream]
    return {"reply": reply.text, "is_reply": isinstance(reply, Reply), "is_stream": isinstance(stream, TextStream),
            "pieces": pieces, "streamed": stream.reply.text, "tokens": stream.reply.completion_tokens}


async def child(sys: Sys, word: str) -> str:
    return f"child got {word}"


async def typed_errors(sys: Sys) -> list[str]:
    """How each call failed (the class name and errno), as a local app would see them."""
    seen = []
    for call in (lambda: sys.wait(999), lambda: sys.sleep(-1), lambda: sys.recv(timeout=0.01),
                 lambda: sys.kill(1), lambda: sys.syscall({"call": "frobnicate"})):
        try:
            await call()
            seen.append("returned")
        except SyscallError as exc:
            seen.append(f"{type(exc).__name__}:{exc.code.name}")
    return seen


async def writes_and_asks(sys: Sys) -> str:
    await sys.write("thinking...\n")
    name = await sys.ask_user("who are you?")
    await sys.write(f"hello {name}\n")
    return name


class Recorder:
    """A console (llmos.kernel.console.Console's shape) that records and answers."""

    def __init__(self, answer: str) -> None:
        self.answer, self.written, self.asked = answer, [], []

    def write(self, pid: int, text: str) -> None:
        self.written.append(text)

    async def ask(self, pid: int, question: str) -> str:
        self.asked.append(question)
        return self.answer


# -- the same code, the same results ------------------------------------------------------------------
async def test_a_remote_app_chats_and_streams_with_the_results_a_local_one_gets():
    async with daemon() as srv:
        status = await run_remote(srv.url, chatty, ["what is up?"], api_key=srv.key)
        assert status.state is ProcState.EXITED, status.reason
        assert status.result == {"reply": "echo: what is up?", "is_reply": True, "is_stream": True,
                                 "pieces": ["echo: ", "tell ", "me ", "more"], "streamed": "echo: tell me more",
                                 "tokens": 4}
        assert status.name == "chatty"
        calls = [e.call for e in srv.kernel.trace if e.pid == status.pid]
        assert calls == ["chat", "chat"]  # checked and traced in the daemon, as the session's


async def test_a_remote_app_spawns_by_reference_and_waits_for_its_child():
    async def parent(sys: Sys) -> Any:
        info = await sys.spawn(f"{HERE}:child", "hi", name="kid")
        status = await sys.wait(info.pid, timeout=5)
        return [info.ppid == sys.pid, status.result, (await sys.getpid()) == sys.pid]

    async with daemon() as srv:
        status = await run_remote(srv.url, parent, caps=DEFAULT_APP_CAPS | {"proc.exec"}, api_key=srv.key)
        assert status.result == [True, "child got hi", True]
        # Starting a file is running any code (the session could have written it): not a default right.
        refused = await run_remote(srv.url, parent, api_key=srv.key)
        assert refused.state is ProcState.FAILED and "PermissionDenied" in refused.reason
        assert "proc.exec" in refused.reason


async def test_typed_errors_are_raised_on_the_client_as_the_same_classes():
    async with daemon() as srv:
        status = await run_remote(srv.url, typed_errors, api_key=srv.key)
        assert status.result == ["NoSuchProcess:ESRCH", "InvalidRequest:EINVAL", "Timeout:ETIMEDOUT",
                                 "PermissionDenied:EPERM", "UnknownSyscall:ENOSYS"]


async def test_a_capability_the_session_lacks_is_PermissionDenied_on_the_client():
    async with daemon() as srv, srv.client.remote(caps=["console"]) as session:
        with pytest.raises(PermissionDenied, match="model.generate"):
            await session.sys.chat("hello")
        assert srv.kernel.trace[-1].outcome == "EPERM"
        assert (await session.sys.ps())[0].name == "llmosd"  # what needs no capability works


async def test_a_syscall_quota_is_enforced_on_a_remote_session():
    async with daemon() as srv, srv.client.remote(quotas={"max_syscalls": 2}) as session:
        await session.sys.getpid()
        await session.sys.getpid()
        with pytest.raises(QuotaExceeded):
            await session.sys.getpid()


async def test_a_python_callable_cannot_be_spawned_remotely():
    async with daemon() as srv, srv.client.remote() as session:
        with pytest.raises(InvalidRequest, match="'app' must be a reference string"):
            await session.sys.spawn(child, "x")
        # Nor over the raw wire: what JSON can carry there is no app either.
        response = await session.connection.post(f"/v1/remote/{session.pid}/syscalls",
                                                 json={"call": "spawn", "app": {"module": "x"}},
                                                 headers={wire.SESSION_HEADER: session.token})
        assert response.status_code == 400 and "'app'" in response.json()["error"]["message"]


async def test_write_and_ask_user_reach_the_client_console():
    async with daemon() as srv:
        console = Recorder("ada")
        status = await run_remote(srv.url, writes_and_asks, console=console, api_key=srv.key)
        assert status.result == "ada"
        assert "".join(console.written) == "thinking...\nhello ada\n"
        assert console.asked == ["who are you?"]


async def test_a_failing_remote_app_fails_its_process_with_its_own_exception():
    async def broken(sys: Sys) -> None:
        await sys.getpid()
        raise ZeroDivisionError("division by zero")

    async with daemon() as srv:
        status = await run_remote(srv.url, broken, api_key=srv.key)
        assert (status.state, status.reason) == (ProcState.FAILED, "ZeroDivisionError: division by zero")
        assert "in broken" in status.traceback  # the app's own traceback, from the client


# -- ps, kill, the lease, the token ----------------------------------------------------------------
async def test_the_session_is_a_process_that_ps_shows_and_kill_ends():
    async with daemon() as srv, srv.client.remote(name="far-away") as session:
        assert [p.name for p in await srv.client.ps()] == ["llmosd", "far-away"]
        failure: list[BaseException] = []

        async def receive() -> None:
            try:
                await session.sys.recv()
            except SyscallError as exc:
                failure.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await until_state(srv.kernel, session.pid, ProcState.BLOCKED)
            await srv.client.kill(session.pid, "not wanted")
        assert errno_of(failure[0]) == "EINTR" and "not wanted" in str(failure[0])
        with pytest.raises(NoSuchProcess):
            await session.sys.getpid()
        status = await session.exit()  # the client learns how it ended
        assert (status.state, status.reason) == (ProcState.KILLED, "not wanted")


async def test_a_cancelled_remote_recv_consumes_no_message():
    async with daemon() as srv, srv.client.remote() as session:
        with anyio.move_on_after(0.2):
            await session.sys.recv()
        await until(lambda: srv.kernel.procs.get(session.pid).state is ProcState.RUNNING)  # the call was cancelled
        srv.kernel.send(session.pid, "kept")
        assert (await session.sys.recv(timeout=1)).payload == "kept"


async def test_a_silent_client_loses_its_session_when_the_lease_expires():
    async with daemon() as srv, srv.client.http() as http:
        opened = (await http.post("/v1/remote", json={"name": "silent", "lease_s": 0.2})).json()
        pid, token = opened["pid"], opened["token"]
        info = await until_state(srv.kernel, pid, ProcState.KILLED, timeout=5)
        assert "lease expired" in info.reason
        response = await http.post(f"/v1/remote/{pid}/syscalls", json={"call": "getpid"},
                                   headers={wire.SESSION_HEADER: token})
        assert response.status_code == 404
        status = ExitStatus.model_validate((await http.post(f"/v1/remote/{pid}/exit", json={},
                                                            headers={wire.SESSION_HEADER: token})).json())
        assert status.state is ProcState.KILLED and "lease expired" in status.reason


async def test_heartbeats_keep_a_session_alive_through_a_long_call():
    async with daemon() as srv, srv.client.remote(lease_s=0.3) as session:
        await session.sys.sleep(1.0)  # more than three leases, inside one call
        assert await session.sys.getpid() == session.pid


async def test_every_call_needs_the_session_token():
    async with daemon() as srv, srv.client.remote() as session:
        for token in (None, "forged"):
            headers = {wire.SESSION_HEADER: token} if token else {}
            response = await session.connection.post(f"/v1/remote/{session.pid}/syscalls",
                                                     json={"call": "getpid"}, headers=headers)
            assert response.status_code == 403
            assert response.json()["error"]["llmos_error"] == "PermissionDenied"
        assert isinstance(session.sys, RemoteSys) and await session.sys.getpid() == session.pid


async def test_leaving_a_session_without_exit_fails_it():
    async with daemon() as srv:
        with pytest.raises(RuntimeError):
            async with srv.client.remote() as session:
                raise RuntimeError("the client crashed")
        status = await srv.client.wait(session.pid, timeout=5)
        assert (status.state, status.reason) == (ProcState.FAILED, "RuntimeError: the client crashed")


async def test_a_streamed_generation_left_early_is_cancelled_in_the_daemon():
    driver = FakeDriver(step_delay_s=0.01)
    driver.enqueue(" ".join(f"w{i}" for i in range(500)))
    async with daemon(driver) as srv, srv.client.remote() as session:
        stream = await session.sys.generate("go", stream=True, max_tokens=500)
        async for piece in stream:
            break
        await stream.aclose()
        await until(lambda: driver.jobs and driver.jobs[-1].finish_reason == "cancelled", timeout=5)
        assert len(driver.jobs[-1].token_ids) < 500


# -- the real model --------------------------------------------------------------------------------
@pytest.mark.model
async def test_a_remote_app_gets_a_real_reply_from_a_daemon_serving_smollm2(smollm2_server):
    async def ask_capital(sys: Sys) -> dict[str, Any]:
        reply = await sys.chat("What is the capital of France?", max_tokens=8, temperature=0)
        return {"text": reply.text, "model": reply.model, "tokens": reply.completion_tokens}

    status = await run_remote(smollm2_server, ask_capital, api_key=None)
    assert status.state is ProcState.EXITED, status.reason
    assert "smollm2" in status.result["model"].lower() and 0 < status.result["tokens"] <= 8
    assert "paris" in status.result["text"].lower()
