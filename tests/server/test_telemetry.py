"""OpenTelemetry export: each syscall a span under its process's span, generation calls in
the GenAI semantic conventions, captured with the SDK's in-memory exporter; and real OTLP
export from `llmos serve` to a receiver on loopback (OTLP/HTTP and gRPC)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import llmos
from llmos.server.telemetry import instrumented, otlp_exporter
from llmos.syscalls import NoSuchProcess, Reply
from llmos.testing import FakeDriver, free_port, result, served, until


def memory_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # exported as each span ends
    return provider, exporter


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


async def test_a_chat_is_a_genai_span_under_its_process_span_with_the_replys_usage() -> None:
    provider, exporter = memory_provider()

    async def agent(sys):  # noqa: ANN001
        reply = await sys.chat("hello there", max_tokens=20, temperature=0.5, seed=7)
        completion = await sys.generate("Once upon", max_tokens=5)
        choice = await sys.choose("Which fits?", ["yes", "no"])
        return reply, completion, choice

    async with llmos.boot(FakeDriver(), memory=None, embedder=None) as kernel, instrumented(kernel, provider):
        info = await kernel.spawn(agent, name="agent")
        reply, completion, choice = result(await kernel.wait(info.pid, timeout=5))
        await until(lambda: bool(spans_named(exporter, "invoke_agent agent")))

    [chat] = spans_named(exporter, "chat fake")[:1]
    attrs = dict(chat.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "llmos"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "fake"
    assert (attrs["gen_ai.request.max_tokens"], attrs["gen_ai.request.temperature"], attrs["gen_ai.request.seed"]) \
        == (20, 0.5, 7)
    assert attrs["gen_ai.usage.input_tokens"] == reply.prompt_tokens > 0
    assert attrs["gen_ai.usage.output_tokens"] == reply.completion_tokens == 3
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert (attrs["llmos.pid"], attrs["llmos.process.name"], attrs["llmos.outcome"]) == (info.pid, "agent", "ok")
    assert chat.status.status_code is StatusCode.UNSET
    assert chat.end_time - chat.start_time > 0

    [text] = spans_named(exporter, "text_completion fake")
    assert text.attributes["gen_ai.operation.name"] == "text_completion"
    assert text.attributes["gen_ai.usage.output_tokens"] == completion.completion_tokens
    choose = [s for s in spans_named(exporter, "chat fake") if s.attributes["llmos.syscall"] == "choose"]
    assert choose and choose[0].attributes["gen_ai.usage.input_tokens"] == choice.prompt_tokens

    [process] = spans_named(exporter, "invoke_agent agent")
    assert process.parent is None  # each process is the root of its own trace
    assert process.attributes["gen_ai.agent.id"] == str(info.pid)
    assert process.attributes["llmos.process.state"] == "EXITED"
    assert process.attributes["llmos.usage.completion_tokens"] == reply.completion_tokens + completion.completion_tokens
    for span in (chat, text, choose[0]):
        assert span.parent.span_id == process.context.span_id
        assert span.context.trace_id == process.context.trace_id
        assert process.start_time <= span.start_time <= span.end_time <= process.end_time


async def test_a_failed_call_is_an_error_span_and_quiet_calls_are_not_exported() -> None:
    provider, exporter = memory_provider()

    async def prober(sys):  # noqa: ANN001
        await sys.ps()
        await sys.stats()
        with pytest.raises(NoSuchProcess):
            await sys.kill(4242)
        return await sys.call_tool("add", a=2, b=3)

    async with llmos.boot(FakeDriver(), memory=None, embedder=None, tools=[add]) as kernel, \
            instrumented(kernel, provider):
        status = await kernel.wait((await kernel.spawn(prober, name="prober")).pid, timeout=10)
        assert result(status) == 5
        await until(lambda: bool(spans_named(exporter, "invoke_agent prober")))

    names = [s.name for s in exporter.get_finished_spans()]
    assert "ps" not in names and "stats" not in names  # a dashboard's polling is not exported
    [kill] = spans_named(exporter, "kill")
    assert kill.status.status_code is StatusCode.ERROR
    assert kill.attributes["error.type"] == "NoSuchProcess" and kill.attributes["llmos.outcome"] == "ESRCH"
    [tool] = spans_named(exporter, "execute_tool add")
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool" and tool.attributes["gen_ai.tool.name"] == "add"


async def test_a_streamed_chat_span_lasts_until_the_generation_ends_and_has_its_usage() -> None:
    provider, exporter = memory_provider()
    driver = FakeDriver(step_delay_s=0.01)
    driver.enqueue("one two three four five six")

    async def streamer(sys):  # noqa: ANN001
        stream = await sys.chat("tell me", stream=True)
        text = await stream.text()
        return stream.reply, text

    async with llmos.boot(driver, memory=None, embedder=None) as kernel, instrumented(kernel, provider):
        reply, text = result(await kernel.wait((await kernel.spawn(streamer)).pid, timeout=5))
        await until(lambda: bool(spans_named(exporter, "chat fake")))

    [chat] = spans_named(exporter, "chat fake")
    assert text == "one two three four five six" and isinstance(reply, Reply)
    assert chat.attributes["gen_ai.request.stream"] is True
    assert chat.attributes["gen_ai.usage.input_tokens"] == reply.prompt_tokens
    assert chat.attributes["gen_ai.usage.output_tokens"] == reply.completion_tokens == 6
    assert (chat.end_time - chat.start_time) / 1e9 >= 5 * 0.01  # it covers the generation, not the call


async def test_a_killed_process_span_ends_with_its_state_and_a_child_links_its_parent() -> None:
    provider, exporter = memory_provider()
    driver = FakeDriver(step_delay_s=0.01)
    driver.enqueue(" ".join(["word"] * 500))

    async def child(sys):  # noqa: ANN001
        await sys.sleep(0)
        await sys.chat("go on and on")

    async def parent(sys):  # noqa: ANN001
        info = await sys.spawn(child, name="child")
        await sys.sleep(0.05)
        await sys.kill(info.pid, "enough")
        return (await sys.wait(info.pid)).state.name

    async with llmos.boot(driver, memory=None, embedder=None) as kernel, instrumented(kernel, provider):
        assert result(await kernel.wait((await kernel.spawn(parent, name="parent")).pid, timeout=5)) == "KILLED"
        await until(lambda: len(spans_named(exporter, "invoke_agent child")) == 1)
        await until(lambda: len(spans_named(exporter, "invoke_agent parent")) == 1)

    [child_span] = spans_named(exporter, "invoke_agent child")
    [parent_span] = spans_named(exporter, "invoke_agent parent")
    assert child_span.attributes["llmos.process.state"] == "KILLED"
    assert child_span.attributes["llmos.process.reason"] == "enough"
    assert [link.context.span_id for link in child_span.links] == [parent_span.context.span_id]
    [chat] = spans_named(exporter, "chat fake")
    assert chat.parent.span_id == child_span.context.span_id
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("cancelled",)  # killed mid-generation


async def test_leaving_ends_the_spans_of_processes_still_running() -> None:
    provider, exporter = memory_provider()

    async def sleeper(sys):  # noqa: ANN001
        await sys.sleep(0)
        await sys.sleep(60)

    async with llmos.boot(FakeDriver(), memory=None, embedder=None) as kernel:
        async with instrumented(kernel, provider) as tracer:
            await kernel.spawn(sleeper, name="sleeper")
            await until(lambda: bool(tracer.process_spans))
        [span] = spans_named(exporter, "invoke_agent sleeper")
        assert span.attributes["llmos.process.state"] in ("RUNNING", "BLOCKED")
        assert not kernel.dispatcher.listeners  # the kernel no longer reports to it


async def test_a_trace_listener_that_fails_never_fails_the_call(caplog: pytest.LogCaptureFixture) -> None:
    heard: list[tuple[str, Any]] = []

    def broken(event: Any, proc: Any, request: Any, answer: Any) -> None:
        raise RuntimeError("exporter bug")

    def listener(event: Any, proc: Any, request: Any, answer: Any) -> None:
        heard.append((event.call, answer))

    async def app(sys):  # noqa: ANN001
        return (await sys.chat("hi")).text

    async with llmos.boot(FakeDriver(), memory=None, embedder=None) as kernel:
        kernel.dispatcher.listeners += [broken, listener]
        assert result(await kernel.wait((await kernel.spawn(app)).pid, timeout=5)) == "echo: hi"
    [(call, reply)] = heard
    assert call == "chat" and isinstance(reply, Reply) and reply.text == "echo: hi"
    assert "trace listener" in caplog.text and "exporter bug" in caplog.text


# -- real OTLP export ------------------------------------------------------------------------------
class Received:
    """Spans an OTLP receiver decoded, by name."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                for scope in resource_spans.scope_spans:
                    self.spans += [(service, span) for span in scope.spans]

    def named(self, name: str) -> list[Any]:
        with self.lock:
            return [(service, span) for service, span in self.spans if span.name == name]


def attributes(span: Any) -> dict[str, Any]:
    found = {}
    for kv in span.attributes:
        value = kv.value
        found[kv.key] = getattr(value, value.WhichOneof("value"))
    return found


@contextmanager
def otlp_http_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP receiver on loopback: POST /v1/traces, protobuf bodies."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                received.add(request)
                answer, status = trace_service_pb2.ExportTraceServiceResponse().SerializeToString(), 200
            else:
                answer, status = b"", 404
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def otlp_grpc_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
            received.add(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(grace=None).wait(timeout=5)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_llmos_serve_exports_spans_by_otlp_when_an_endpoint_is_set(protocol: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = otlp_http_receiver if protocol == "http/protobuf" else otlp_grpc_receiver
    with receiver() as (endpoint, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "llmos-under-test")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds: export soon after each span
        async with served() as srv, httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
            answer = await client.post("/v1/chat/completions", json={
                "model": "fake", "messages": [{"role": "user", "content": "hello otlp"}]})
            assert answer.status_code == 200
            usage = answer.json()["usage"]
            await until(lambda: bool(received.named("chat fake")), timeout=10)

    [(service, span)] = received.named("chat fake")
    attrs = attributes(span)
    assert service == "llmos-under-test"
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "fake"
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attrs["llmos.process.name"] == "openai.chat"
    # the request's process and the daemon's own span arrive too, at their end / at shutdown
    await until(lambda: bool(received.named("invoke_agent openai.chat")), timeout=10)
    assert received.named("invoke_agent llmosd")


def test_the_exporter_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    assert otlp_exporter() is None  # no endpoint: `llmos serve` exports nothing
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces")
    assert type(otlp_exporter()).__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(llmos.ConfigError, match="http/json"):
        otlp_exporter()


@pytest.mark.model
async def test_the_real_models_chat_span_counts_the_replys_tokens() -> None:
    provider, exporter = memory_provider()
    async with served(model="smollm2") as srv, instrumented(srv.kernel, provider):
        async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
            answer = await client.post("/v1/chat/completions", json={
                "model": "smollm2", "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": "Name a colour."}]})
        assert answer.status_code == 200, answer.text
        usage = answer.json()["usage"]
        await until(lambda: any(s.attributes.get("llmos.syscall") == "chat" for s in exporter.get_finished_spans()))
    [chat] = [s for s in exporter.get_finished_spans() if s.attributes.get("llmos.syscall") == "chat"]
    assert chat.name == f"chat {srv.kernel.driver.name}"
    assert chat.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 5
    assert chat.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert chat.attributes["gen_ai.request.max_tokens"] == 8
