"""The remote driver (llmos.drivers.remote) against real servers on loopback: `llmos serve`
(in this event loop over the FakeDriver, and in its own process over SmolLM2), a small
flaky HTTP server for the error paths, and llama-cpp-python's OpenAI server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

import llmos
from llmos.drivers.decisions import GeneratedDecisions
from llmos.drivers.remote import RemoteDriver
from llmos.drivers.remote_server import PLACEHOLDER_ID, estimate_chat
from llmos.drivers.remote_models import read_models
from llmos.kernel.errors import ContextOverflow, InvalidRequest, ModelError, QuotaExceeded
from llmos.kernel.model import ChatMessage
from llmos.kernel.process import ProcState
from llmos.syscalls import ToolSpec
from llmos.testing import (
    FakeDriver, caught, free_port, llmos_server, served, stop, until, until_state, wait_for_port)

HELLO = (ChatMessage(role="user", content="Hello there"),)


async def connect(url: str, model: str | None, **options: Any) -> RemoteDriver:
    """A driver for the server at `url`: connecting blocks, so off the event loop (which may
    be the one serving `url`)."""
    return await anyio.to_thread.run_sync(lambda: RemoteDriver(url + "/v1", model, **options))


@asynccontextmanager
async def remote_kernel(url: str, model: str | None = "fake", boot: dict[str, Any] | None = None,
                        **options: Any) -> AsyncIterator[Any]:
    """A kernel (booted with `boot` options) whose model is the one served at `url`, the
    driver made with `options`; yields (kernel, driver)."""
    driver = await connect(url, model, **options)
    try:
        async with llmos.boot(driver, embedder=None, memory=None, mcp_servers=None, **(boot or {})) as kernel:
            yield kernel, driver
    finally:
        await anyio.to_thread.run_sync(driver.close)


async def run(kernel: Any, app: Any, *args: Any, timeout: float = 20, **options: Any) -> tuple[Any, Any]:
    """Run `app` (an app, or a function of `sys` returning an awaitable) as a process to its
    end: its last `ps` entry (with its stats) and its result."""
    async def main(sys: Any, *args: Any) -> Any:
        return await app(sys, *args)

    info = await kernel.spawn(main, *args, **options)
    ended = await until_state(kernel, info.pid, timeout=timeout)
    status = await kernel.wait(info.pid)
    assert status.state is ProcState.EXITED, f"{status.reason}\n{status.traceback}"
    return ended, status.result


async def chat_streamed(sys: Any, message: str, **sampling: Any) -> tuple[list[str], Any]:
    stream = await sys.chat(message, stream=True, **sampling)
    return [piece async for piece in stream], stream.reply


# -- against `llmos serve` over the FakeDriver, in this event loop -------------------------------------
async def test_a_process_chats_streams_and_is_charged_the_server_s_token_counts():
    fake = FakeDriver(step_delay_s=0.03)  # a word every 30 ms: more than a step's gathering
    async with served(fake) as server, remote_kernel(server.url) as (kernel, driver):
        fake.enqueue("Paris is the capital of France.")
        ended, (pieces, reply) = await run(kernel, chat_streamed, "What is the capital of France?")
    assert "".join(pieces) == reply.text == "Paris is the capital of France."
    assert len(pieces) > 1  # it streamed
    served_job = fake.jobs[-1]
    assert reply.completion_tokens == len(served_job.token_ids) == 6  # the server's usage: one word a token
    assert reply.prompt_tokens == len(served_job.prompt_ids)
    assert ended.stats.prompt_tokens == reply.prompt_tokens and ended.stats.completion_tokens == 6
    assert driver.statistics() == {"streams": 0, "requests": 1, "retries": 0, "failures": 0}


async def test_it_reads_the_context_length_and_counts_tokens_with_the_server_s_tokenizer():
    fake = FakeDriver(context_length=3000)
    async with served(fake) as server:
        driver = await connect(server.url, "fake", context_length=5000)
        try:
            assert driver.context_length == 3000  # the server's max_model_len beats a larger configured one
            assert driver.tokenizer.dialect == "vllm"
            assert await anyio.to_thread.run_sync(driver.tokenize, HELLO) == fake.tokenize(HELLO)  # exact
            # On the event loop a count never waits on the network: the cached count, else an estimate.
            assert driver.tokenize(HELLO) == fake.tokenize(HELLO)
            other = (ChatMessage(role="user", content="Something else"),)
            assert driver.tokenize(other) == [PLACEHOLDER_ID] * estimate_chat(other)
            # FakeDriver counts no raw text: that is estimated (3 characters a token, rounded up).
            assert len(await anyio.to_thread.run_sync(driver.tokenize_text, "abcdefg")) == 3
            smaller = await connect(server.url, "fake", context_length=1000)
            assert smaller.context_length == 1000
        finally:
            await anyio.to_thread.run_sync(driver.close)


async def test_the_tokenize_endpoint_answers_like_vllm():
    fake = FakeDriver()
    async with served(fake) as server, httpx.AsyncClient(base_url=server.url) as http:
        chat = [m.model_dump() for m in HELLO]
        answer = (await http.post("/tokenize", json={"model": "fake", "messages": chat})).json()
        assert answer == {"tokens": fake.tokenize(HELLO), "count": len(fake.tokenize(HELLO)), "max_model_len": 4096}
        refused = await http.post("/tokenize", json={"model": "fake", "prompt": "hi"})  # FakeDriver counts chats only
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt"
        neither = await http.post("/tokenize", json={"model": "fake"})
        assert neither.status_code == 400 and "exactly one" in neither.json()["error"]["message"]
        unknown = await http.post("/tokenize", json={"model": "nope", "prompt": "hi"})
        assert unknown.status_code == 404


async def test_the_concurrency_limit_holds_and_every_process_is_served():
    fake = FakeDriver(step_delay_s=0.01)
    async with served(fake) as server, remote_kernel(server.url, max_concurrency=2) as (kernel, driver):
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, driver.statistics()["streams"])
                await anyio.sleep(0.002)

        async def ask(sys: Any, n: int) -> str:
            return (await sys.chat(f"question {n}")).text

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            infos = [await kernel.spawn(ask, n) for n in range(5)]
            statuses = [await kernel.wait(info.pid, timeout=20) for info in infos]
            tg.cancel_scope.cancel()
    assert [s.result for s in statuses] == [f"echo: question {n}" for n in range(5)]
    assert peak == 2  # never more streams than max_concurrency, and the limit was used
    assert max(len(batch) for batch in fake.batches) == 2  # the server batched the two it had at once


async def test_a_preempted_job_keeps_its_stream_and_resumes_where_it_stopped():
    fake = FakeDriver(lambda prompt: "one two three four five six seven eight", step_delay_s=0.02)
    async with served(fake) as server, remote_kernel(server.url, boot={"policy": "rr", "quantum": 2},
                                                      max_concurrency=1) as (kernel, _):
        async def ask(sys: Any) -> str:
            return "".join([piece async for piece in await sys.chat("count", stream=True)])

        infos = [await kernel.spawn(ask) for _ in range(2)]
        texts = [(await kernel.wait(info.pid, timeout=20)).result for info in infos]
        preemptions = kernel.generation.statistics().scheduler.preemptions
    assert texts == ["one two three four five six seven eight"] * 2
    assert preemptions >= 2  # they took turns...
    assert len(fake.jobs) == 2 and not any(job.cancelled for job in fake.jobs)  # ...on one stream each


async def test_killing_a_process_mid_generation_closes_its_stream_and_the_server_cancels():
    fake = FakeDriver(lambda prompt: "word " * 200, step_delay_s=0.02)
    async with served(fake) as server, remote_kernel(server.url) as (kernel, driver):
        first = anyio.Event()

        async def talk(sys: Any) -> None:
            async for _ in await sys.chat("Tell me a long story", stream=True):
                first.set()

        info = await kernel.spawn(talk)
        with anyio.fail_after(10):
            await first.wait()
        kernel.kill(info.pid)
        await until(lambda: driver.statistics()["streams"] == 0, timeout=5)
        await until(lambda: not server.kernel.generation.jobs, timeout=5)  # the server saw the client leave
        served_job = fake.jobs[-1]
    assert served_job.cancelled and served_job.finish_reason == "cancelled"
    assert len(served_job.token_ids) < 200


async def test_choose_is_refused_as_a_remote_model_cannot_score():
    async with served() as server, remote_kernel(server.url) as (kernel, _):
        async def pick(sys: Any) -> Any:
            return await caught(sys.choose("Which colour is the sky?", ["blue", "green"]))

        _, error = await run(kernel, pick)
    assert isinstance(error, InvalidRequest) and "cannot score" in error.message


async def test_tool_choices_are_generated_as_json_for_a_model_that_cannot_score():
    fake = FakeDriver()
    clock = ToolSpec(name="get_time", description="The current time.")
    async with served(fake) as server, remote_kernel(server.url) as (kernel, _):
        assert isinstance(kernel.decisions, GeneratedDecisions)
        fake.enqueue('{"tool": "get_time"}', "{}")  # the choice, then its arguments

        async def ask(sys: Any) -> Any:
            return await sys.chat("What time is it?", functions=[clock])

        _, reply = await run(kernel, ask)
    assert [(call.name, call.arguments) for call in reply.tool_calls] == [("get_time", {})]
    # Each turn asked the server for JSON that follows the policy's schema.
    assert fake.jobs[0].sampling.json_schema["properties"]["tool"]["enum"] == ["get_time", "none"]


async def test_a_raw_prompt_uses_the_completions_endpoint():
    fake = FakeDriver()
    async with served(fake) as server, remote_kernel(server.url) as (kernel, _):
        fake.enqueue("is Paris.")

        async def complete(sys: Any) -> Any:
            return await sys.generate("The capital of France", max_tokens=5)

        _, reply = await run(kernel, complete)
    assert reply.text == "is Paris." and fake.jobs[-1].prompt == "The capital of France"


# -- the model library: models.toml and ad-hoc references --------------------------------------------
def write_models(home: Path, text: str) -> Path:
    path = home / "models.toml"
    path.write_text(text)
    return path


async def test_a_model_configured_in_models_toml_boots_by_name(llmos_home, monkeypatch):
    fake = FakeDriver()
    async with served(fake, api_key="sesame") as server:
        monkeypatch.setenv("BIG_KEY", "sesame")
        write_models(llmos_home, f'[models.big]\nbase_url = "{server.url}/v1"\nmodel = "fake"\n'
                                 f'api_key_env = "BIG_KEY"\nmax_concurrency = 3\ndescription = "the big one"\n')
        assert ("big", "the big one", True) in [(m.name, m.description, m.cached) for m in llmos.available_models()]
        async with llmos.boot("big", embedder=None, memory=None, mcp_servers=None) as kernel:
            assert kernel.driver.name == "big" and kernel.driver.max_batch == 3
            _, reply = await run(kernel, lambda sys: sys.chat("hi"))
            await anyio.to_thread.run_sync(kernel.driver.close)
    assert reply.text == "echo: hi" and reply.model == "big"


async def test_load_model_gives_a_synchronous_model_of_a_configured_remote_one(llmos_home):
    async with served() as server:
        write_models(llmos_home, f'[models.big]\nbase_url = "{server.url}/v1"\n')  # its only model: no id needed

        def chat() -> tuple[str, int]:
            with llmos.LLMOS() as runtime:
                model = runtime.load_model("big")
                answer = model.chat("hi there"), model.context_length
            model.driver.close()
            return answer

        assert await anyio.to_thread.run_sync(chat) == ("echo: hi there", 4096)


async def test_an_adhoc_reference_boots_without_configuration():
    async with served() as server:
        async with llmos.boot(f"openai:{server.url}/v1#fake", embedder=None, memory=None, mcp_servers=None) as kernel:
            _, reply = await run(kernel, lambda sys: sys.chat("hi"))
            await anyio.to_thread.run_sync(kernel.driver.close)
    assert reply.text == "echo: hi" and kernel.driver.name == "fake"


@pytest.mark.parametrize(("text", "named"), [
    ('[models.big]\nmodel = "x"\n', "models.big.base_url"),
    ('[models.big]\nbase_url = "gpu:8000"\n', "models.big.base_url"),
    ('[models.big]\nbase_url = "http://gpu/v1"\nmax_concurency = 4\n', "models.big.max_concurency"),
    ('[models.big]\nbase_url = "http://gpu/v1"\nmax_concurrency = 0\n', "models.big.max_concurrency"),
    ('[model.big]\nbase_url = "http://gpu/v1"\n', "'model'"),
    ('[models.big\n', "not valid TOML"),
])
def test_bad_configuration_is_a_config_error_naming_the_file_and_key(llmos_home, text, named):
    path = write_models(llmos_home, text)
    with pytest.raises(llmos.ConfigError) as error:
        read_models(path)
    assert str(path) in str(error.value) and named in str(error.value)


def test_a_missing_key_variable_is_named_when_the_model_loads(llmos_home, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    write_models(llmos_home, '[models.big]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "NO_SUCH_KEY"\n')
    with pytest.raises(llmos.ConfigError, match=r"models\.toml \[models\.big\]: api_key_env names NO_SUCH_KEY"):
        llmos.load_model("big")


def test_an_unknown_name_lists_the_configured_remote_models_too(llmos_home):
    write_models(llmos_home, '[models.big]\nbase_url = "http://127.0.0.1:9/v1"\n')
    with pytest.raises(llmos.UnknownModel, match=r"smollm2; and in .*models\.toml: big"):
        llmos.load_model("bgi")


def test_an_unreachable_server_is_model_unavailable():
    with pytest.raises(llmos.ModelUnavailable, match="cannot reach"):
        RemoteDriver(f"http://127.0.0.1:{free_port()}/v1", "x", connect_timeout_s=2)


# -- error paths, against a small flaky HTTP server -----------------------------------------------------
class Flaky(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint that fails its first requests as told (`failures`:
    status and headers each; status 200 with {"code": C}: a stream whose one event is an error
    of code C, as llmos serve sends a failure after the headers went out), then answers `behaviour`: "ok" (streams "Hello world"), "stall"
    (sends nothing), "stall-after-text" (streams "Hello" and stalls), or "empty" (an empty stream)."""

    daemon_threads = True

    def __init__(self, failures: list[tuple[int, dict[str, str]]] = (), behaviour: str = "ok") -> None:
        super().__init__(("127.0.0.1", 0), _FlakyHandler)
        self.failures, self.behaviour = list(failures), behaviour
        self.requests: list[dict[str, Any]] = []
        self.released = threading.Event()  # ends every stall

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FlakyHandler(BaseHTTPRequestHandler):
    server: Flaky

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Connection", "close")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        self._send(200, json.dumps({"data": [{"id": "flaky", "max_model_len": 1024}]}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self._send(404, b'{"error": {"message": "no such route"}}')
        self.server.requests.append(body)
        if self.server.failures:
            status, headers = self.server.failures.pop(0)
            if status == 200:
                self._send(200, b"", "text/event-stream")
                return self._event({"error": {"message": f"failing with {headers['code']}", **headers}})
            return self._send(status, json.dumps({"error": {"message": f"failing with {status}"}}).encode(), **headers)
        if not body.get("stream"):
            reply = {"choices": [{"message": {"content": "Hello world"}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
            return self._send(200, json.dumps(reply).encode())
        self._stream()

    def _stream(self) -> None:
        behaviour = self.server.behaviour
        self._send(200, b"", "text/event-stream")
        if behaviour == "empty":
            return
        if behaviour == "stall":
            self.server.released.wait(10)
            return
        self._event({"choices": [{"delta": {"content": "Hello"}, "finish_reason": None}]})
        if behaviour == "stall-after-text":
            self.server.released.wait(10)
            return
        self._event({"choices": [{"delta": {"content": " world"}, "finish_reason": None}]})
        self._event({"choices": [{"delta": {}, "finish_reason": "stop"}]})
        self._event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        self.wfile.write(b"data: [DONE]\n\n")

    def _event(self, chunk: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.flush()


@contextmanager
def flaky(failures: list[tuple[int, dict[str, str]]] = (), behaviour: str = "ok") -> Iterator[Flaky]:
    server = Flaky(failures, behaviour)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()


async def chat_or_error(sys: Any) -> tuple[list[str], Any]:
    """The pieces streamed, and the reply or the error at the end."""
    pieces: list[str] = []
    try:
        async for piece in await sys.chat("hi", stream=True):
            pieces.append(piece)
    except ModelError as error:
        return pieces, error
    return pieces, "finished"


async def test_503s_are_retried_with_backoff_until_the_server_answers():
    with flaky([(503, {}), (502, {})]) as server:
        async with remote_kernel(server.url, "flaky", backoff_s=0.01) as (kernel, driver):
            ended, (pieces, end) = await run(kernel, chat_or_error)
    assert "".join(pieces) == "Hello world" and end == "finished"
    assert len(server.requests) == 3 and driver.statistics()["retries"] == 2
    assert ended.stats.prompt_tokens == 3 and ended.stats.completion_tokens == 2  # the server's usage


async def test_a_429_s_retry_after_is_honoured():
    with flaky([(429, {"Retry-After": "1"})]) as server:
        async with remote_kernel(server.url, "flaky", backoff_s=0.001) as (kernel, _):
            started = time.monotonic()
            _, (pieces, end) = await run(kernel, chat_or_error)
            waited = time.monotonic() - started
    assert "".join(pieces) == "Hello world" and len(server.requests) == 2
    assert 1.0 <= waited < 5  # the server's second, not the driver's millisecond


async def test_retries_end_in_a_model_error_that_says_what_happened():
    with flaky([(503, {})] * 10) as server:
        async with remote_kernel(server.url, "flaky", retries=2, backoff_s=0.001) as (kernel, driver):
            _, (pieces, error) = await run(kernel, chat_or_error)
    assert pieces == [] and isinstance(error, ModelError)
    assert "HTTP 503: failing with 503" in error.message and "after 3 attempts" in error.message
    assert len(server.requests) == 3 and driver.statistics()["failures"] == 1


async def test_a_transient_error_event_before_any_text_is_retried_and_another_is_not():
    with flaky([(200, {"code": "EIO"}), (200, {"code": "EAGAIN"})]) as server:
        async with remote_kernel(server.url, "flaky", backoff_s=0.001) as (kernel, _):
            _, (pieces, end) = await run(kernel, chat_or_error)
    assert "".join(pieces) == "Hello world" and end == "finished" and len(server.requests) == 3
    with flaky([(200, {"code": "EINVAL"})]) as server:
        async with remote_kernel(server.url, "flaky", backoff_s=0.001) as (kernel, _):
            _, (_, error) = await run(kernel, chat_or_error)
    assert "failing with EINVAL" in error.message and len(server.requests) == 1


async def test_a_client_error_is_not_retried():
    with flaky([(400, {})]) as server:
        async with remote_kernel(server.url, "flaky", backoff_s=0.001) as (kernel, _):
            _, (_, error) = await run(kernel, chat_or_error)
    assert "HTTP 400" in error.message and len(server.requests) == 1


async def test_a_silent_server_times_out_and_is_retried_before_any_text():
    with flaky(behaviour="stall") as server:
        async with remote_kernel(server.url, "flaky", timeout_s=0.3, retries=1, backoff_s=0.001) as (kernel, _):
            started = time.monotonic()
            _, (pieces, error) = await run(kernel, chat_or_error)
            took = time.monotonic() - started
    assert pieces == [] and "ReadTimeout" in error.message and len(server.requests) == 2
    assert 0.6 <= took < 5


async def test_after_text_a_broken_stream_is_an_error_not_a_retry():
    with flaky(behaviour="stall-after-text") as server:
        async with remote_kernel(server.url, "flaky", timeout_s=0.3, backoff_s=0.001) as (kernel, _):
            _, (pieces, error) = await run(kernel, chat_or_error)
    assert pieces == ["Hello"] and "ReadTimeout" in error.message  # what came is kept
    assert len(server.requests) == 1


async def test_a_stream_that_ends_at_once_is_asked_again_without_streaming():
    with flaky(behaviour="empty") as server:
        async with remote_kernel(server.url, "flaky") as (kernel, _):
            _, (pieces, end) = await run(kernel, chat_or_error)
    assert pieces == ["Hello world"] and end == "finished"
    assert [r["stream"] for r in server.requests] == [True, False]
    assert "stream_options" not in server.requests[1]


async def test_the_sampling_settings_reach_the_server():
    with flaky() as server:
        async with remote_kernel(server.url, "flaky") as (kernel, _):
            schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
            await run(kernel, lambda sys: sys.chat("hi", max_tokens=7, temperature=0.5, top_p=0.9, seed=3,
                                                    stop=["\n"], json_schema=schema))
    sent = server.requests[0]
    assert {k: sent[k] for k in ("max_tokens", "temperature", "top_p", "seed", "stop", "stream_options")} == {
        "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["\n"],
        "stream_options": {"include_usage": True}}
    closed = {**schema, "additionalProperties": False}  # as the kernel's decision policy asks (json_reply)
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": closed}}
    assert sent["model"] == "flaky" and sent["messages"][-1] == {"role": "user", "content": "hi"}
    assert sent["messages"][0]["role"] == "system" and "- a (optional): integer" in sent["messages"][0]["content"]


# -- against a real `llmos serve --model smollm2` process ---------------------------------------------
@pytest.fixture(scope="module")
def smollm2_url(session_llmos_home: Path) -> Iterator[str]:
    with llmos_server("--model", "smollm2", env={"LLMOS_HOME": str(session_llmos_home)}) as url:
        yield url


@pytest.mark.model
async def test_on_the_real_model_a_chat_streams_and_is_accounted(smollm2_url):
    async with remote_kernel(smollm2_url, "smollm2") as (kernel, driver):
        assert driver.context_length == 8192  # SmolLM2's, from the server's /v1/models
        ended, (pieces, reply) = await run(kernel, lambda sys: chat_streamed(sys, "What is the capital of France?",
                                                                              max_tokens=16))
        asked = [ChatMessage(role="user", content="What is the capital of France?")]
        exact = await anyio.to_thread.run_sync(driver.tokenize, asked)
    assert "Paris" in reply.text and "".join(pieces) == reply.text
    assert 0 < reply.completion_tokens <= 16 and reply.prompt_tokens == len(exact)  # counted as the server does
    assert ended.stats.completion_tokens == reply.completion_tokens
    assert ended.stats.prompt_tokens == reply.prompt_tokens


@pytest.mark.model
async def test_on_the_real_model_the_token_quota_holds(smollm2_url):
    async with remote_kernel(smollm2_url, "smollm2") as (kernel, _):
        async def two_chats(sys: Any) -> Any:
            first = await sys.chat("Tell me about apples.", max_tokens=16)
            return first, await caught(sys.chat("And pears?", max_tokens=16))

        ended, (first, second) = await run(kernel, two_chats, quotas=llmos.Quotas(max_tokens=40))
    # The reply was capped to what the quota left after the prompt (counted exactly, as the server counts).
    assert first.finish_reason == "length" and first.prompt_tokens + first.completion_tokens == 40
    assert isinstance(second, QuotaExceeded)
    assert ended.stats.prompt_tokens + ended.stats.completion_tokens == 40


@pytest.mark.model
async def test_on_the_real_model_concurrent_processes_are_served_together(smollm2_url):
    async with remote_kernel(smollm2_url, "smollm2") as (kernel, driver):
        async def ask(sys: Any, question: str) -> Any:
            return await sys.chat(question, max_tokens=12)

        questions = ["What is 2 + 2?", "Name a colour.", "Say hello.", "Name an animal."]
        infos = [await kernel.spawn(ask, q) for q in questions]
        await until(lambda: driver.statistics()["streams"] >= 3, timeout=10)  # open at once, batched by the server
        replies = [(await kernel.wait(info.pid, timeout=60)).result for info in infos]
    assert all(reply.text and reply.completion_tokens <= 12 for reply in replies)


@pytest.mark.model
async def test_on_the_real_model_a_kill_mid_generation_closes_the_stream(smollm2_url):
    async with remote_kernel(smollm2_url, "smollm2") as (kernel, driver):
        first = anyio.Event()

        async def talk(sys: Any) -> None:
            async for _ in await sys.chat("Tell me a story about a dragon.", stream=True, max_tokens=16):
                first.set()
                await anyio.sleep_forever()

        info = await kernel.spawn(talk)
        with anyio.fail_after(30):
            await first.wait()
        kernel.kill(info.pid)
        await until(lambda: driver.statistics()["streams"] == 0, timeout=5)
        _, after = await run(kernel, lambda sys: sys.chat("Say yes.", max_tokens=4), timeout=30)
    assert after.text  # the server goes on serving


@pytest.mark.model
async def test_on_the_real_model_json_and_tool_calls_work_through_the_server(smollm2_url):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12}},
              "required": ["colour"], "additionalProperties": False}
    clock = ToolSpec(name="get_time", description="The current time.")

    async def ask(sys: Any) -> Any:
        answer = await sys.chat(messages=[{"role": "user", "content": "Name a colour as JSON."}], max_tokens=16,
                                json_schema=schema)
        call = await sys.chat("What time is it?", functions=[clock], tool_choice="required", max_tokens=16)
        return answer, call

    async with remote_kernel(smollm2_url, "smollm2") as (kernel, _):
        _, (answer, call) = await run(kernel, ask, timeout=60)
    assert set(json.loads(answer.text)) == {"colour"}
    assert [(c.name, c.arguments) for c in call.tool_calls] == [("get_time", {})]


@pytest.mark.model
async def test_llmos_serve_serves_a_remote_model_from_models_toml(smollm2_url, llmos_home):
    """`llmos serve -m big` where big is the other server's SmolLM2: one daemon in front of another."""
    write_models(llmos_home, f'[models.big]\nbase_url = "{smollm2_url}/v1"\nmodel = "smollm2"\n')
    with llmos_server("--model", "big", env={"LLMOS_HOME": str(llmos_home)}) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            listed = (await http.get("/v1/models")).json()["data"]
            counted = (await http.post("/tokenize", json={"model": "big", "prompt": "Hello world"})).json()
            answer = (await http.post("/v1/chat/completions", json={
                "model": "big", "max_tokens": 16, "temperature": 0,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]})).json()
    assert [(m["id"], m["context_length"]) for m in listed if m["kind"] == "chat"] == [("big", 8192)]
    assert counted["count"] == 2  # the first server's tokenizer, through the second
    assert "Paris" in answer["choices"][0]["message"]["content"]


# -- against llama-cpp-python's OpenAI server ------------------------------------------------------------
# The llama-cpp-python build installed here dies (SIGSEGV) on its first matmul on an AMX CPU,
# in the AMX weight buffer; the server is started with llama.cpp's extra buffer types off,
# which llama_cpp.server does not expose (it then runs its AVX-512 kernels).
LLAMA_CPP_SERVER = """
import runpy, sys
import llama_cpp.llama_cpp as lib
defaults = lib.llama_model_default_params
def without_extra_buffers():
    params = defaults()
    params.use_extra_bufts = False
    return params
lib.llama_model_default_params = without_extra_buffers
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def llama_cpp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    from llmos.drivers.smollm2 import SOURCE

    port = free_port()
    log = tmp_path_factory.mktemp("llama-cpp") / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-c", LLAMA_CPP_SERVER, "--model", str(SOURCE.path()),
                                   "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512",
                                   "--model_alias", "smollm2-gguf", "--verbose", "false"],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, server, 60, "llama_cpp.server")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{log.read_text()[-3000:]}") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


@pytest.mark.model
async def test_on_llama_cpp_a_chat_answers_and_json_follows_the_schema(llama_cpp_url):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}

    async def ask(sys: Any) -> Any:
        reply = await sys.chat("What is the capital of France?", max_tokens=16)
        answer = await sys.chat(messages=[{"role": "user", "content": "Name a city as JSON."}], max_tokens=16,
                                json_schema=schema)
        return reply, answer

    async with remote_kernel(llama_cpp_url, "smollm2-gguf") as (kernel, driver):
        assert driver.tokenizer.dialect == "llama-cpp-python"
        ended, (reply, answer) = await run(kernel, ask, timeout=60)
    assert reply.text and reply.finish_reason in ("stop", "length") and 0 < reply.completion_tokens <= 16
    assert set(json.loads(answer.text)) == {"city"}
    assert ended.stats.completion_tokens == reply.completion_tokens + answer.completion_tokens


@pytest.mark.model
async def test_on_llama_cpp_the_context_length_is_learnt_from_the_server(llama_cpp_url):
    """llama_cpp.server reports no context length, and fails a streamed request too long
    for it only after answering 200: the plain retry shows its 512, which then holds."""
    long = "word " * 700  # about 700 tokens: past the server's 512, within the default 4096

    async def ask_twice(sys: Any) -> Any:
        return [await caught(sys.chat(messages=[{"role": "user", "content": long}], max_tokens=4)) for _ in range(2)]

    async with remote_kernel(llama_cpp_url, "smollm2-gguf") as (kernel, driver):
        assert driver.context_length == 4096  # nothing reported: the stated default
        _, (first, second) = await run(kernel, ask_twice, timeout=60)
        assert driver.context_length == 512
    assert isinstance(first, ModelError) and "maximum context length is 512" in first.message
    assert isinstance(second, ContextOverflow)  # caught before any request
