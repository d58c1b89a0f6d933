"""OpenTelemetry export of what the kernel traces: a span per syscall, under a span per process.

Generation syscalls follow the OpenTelemetry GenAI semantic conventions, so Langfuse, Phoenix
or Jaeger show them as model calls with their token usage: `chat`, `choose` and the pager's
`context.summarize` are "chat <model>" spans, `generate` a "text_completion <model>" span,
`call_tool` an "execute_tool <tool>" span. A process is an "invoke_agent <name>" span (an
llmos app is an agent), the parent of its syscalls' spans and the root of its own trace
(linked to its parent process's span), ended when the process ends. Every syscall span has
`llmos.pid`, `llmos.process.name`, `llmos.syscall` and `llmos.outcome`; a failed call has
status ERROR and `error.type` its error class.

The kernel imports no OpenTelemetry: this hangs a listener on its dispatcher
(`Dispatcher.listeners`), which is told of each traced call with its request and its result;
the token usage is read from the result (`Reply`, `Choice`). A streamed generation's syscall
ends when the stream is handed back, before its first token: its span stays open until the
generation ends, and then takes its usage and finish reason from the generation itself.

- `instrumented(kernel, provider)`: export to any TracerProvider, for a kernel of your own
  (`async with llmos.boot() as kernel, instrumented(kernel, provider): ...`).
- `exporting(kernel)`: what `llmos serve` does: OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT
  or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (OTLP/HTTP, the spec's default protocol, or
  gRPC with OTEL_EXPORTER_OTLP_PROTOCOL=grpc); the exporters read their other OTEL_* settings
  (headers, timeout) themselves. Nothing otherwise.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

import llmos
from llmos.syscalls import CallTool, Choice, ProcState, Reply, SyscallError, TextStream

log = logging.getLogger(__name__)

PROVIDER = "llmos"  # gen_ai.provider.name (and the older gen_ai.system)
# The GenAI operation of each generation call; any other call is a plain span named after it.
OPERATIONS = {"chat": "chat", "choose": "chat", "context.summarize": "chat", "generate": "text_completion"}
# Calls that only look at the kernel: a dashboard makes them every second, so they are not
# exported unless asked for (`skip_calls=frozenset()`).
QUIET_CALLS = frozenset({"stats", "ps", "trace", "getpid"})
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def _ns(seconds: float) -> int:
    """Wall-clock seconds (time.time()) as OpenTelemetry's nanoseconds."""
    return int(seconds * 1e9)


class KernelTracer:
    """Turns the kernel's traced calls into spans. Lives on the event loop, as the kernel does."""

    def __init__(self, kernel: Any, tracer: trace.Tracer, task_group: TaskGroup,
                 skip_calls: frozenset[str] = QUIET_CALLS) -> None:
        self.model: str | None = None if kernel.driver is None else kernel.driver.name
        self._procs = kernel.procs
        self._tracer = tracer
        self._tg = task_group
        self.skip_calls = skip_calls
        self.process_spans: dict[int, Span] = {}  # pid -> its span, open until the process ends

    # -- the dispatcher's listener -----------------------------------------------------------------
    def on_syscall(self, event: Any, proc: Any, request: Any, answer: Any) -> None:
        if event.call in self.skip_calls:
            return
        parent = trace.set_span_in_context(self._process_span(proc))
        name, attributes = self._describe(event.call, request, answer)
        attributes.update({"llmos.pid": proc.pid, "llmos.process.name": proc.name, "llmos.syscall": event.call,
                           "llmos.outcome": event.outcome})
        span = self._tracer.start_span(name, context=parent, kind=SpanKind.INTERNAL, attributes=attributes,
                                       start_time=_ns(event.at))
        if isinstance(answer, SyscallError):
            span.set_attribute("error.type", type(answer).__name__)
            span.set_status(Status(StatusCode.ERROR, f"{event.outcome}: {answer}"))
        job = answer.job if isinstance(answer, TextStream) else None
        if job is None:
            span.end(end_time=_ns(event.at + event.duration_s))
        else:  # a stream: its span ends with its generation (the job is the one record of it)
            self._tg.start_soon(self._end_with_generation, span, job, name=f"llmos-otel-stream-{job.id}")

    @staticmethod
    async def _end_with_generation(span: Span, job: Any) -> None:
        """End a streamed generation's span when the generation ends, with its usage."""
        try:
            await job.outbox.done.wait()
            span.set_attributes({"gen_ai.usage.input_tokens": len(job.prompt_ids),
                                 "gen_ai.usage.output_tokens": len(job.token_ids),
                                 "gen_ai.response.finish_reasons": [job.finish_reason or "cancelled"]})
            if job.finish_reason == "error":
                span.set_attribute("error.type", "ModelError")
                span.set_status(Status(StatusCode.ERROR, job.error or "the model failed"))
        finally:
            span.end()  # now, or when the export ends first

    def _describe(self, call: str, request: Any, answer: Any) -> tuple[str, dict[str, Any]]:
        """The span's name and attributes for one call (GenAI ones for a generation or a tool)."""
        operation = OPERATIONS.get(call)
        if operation is not None:
            name = f"{operation} {self.model}" if self.model else operation
            return name, {**self._generation_request(operation, request), **_generation_response(answer)}
        if isinstance(request, CallTool):
            return f"execute_tool {request.name}", {"gen_ai.operation.name": "execute_tool",
                                                    "gen_ai.tool.name": request.name}
        return call, {}

    def _generation_request(self, operation: str, request: Any) -> dict[str, Any]:
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": PROVIDER,
                                      "gen_ai.system": PROVIDER}
        if self.model is not None:
            attributes["gen_ai.request.model"] = self.model
        sampling = {"max_tokens": "gen_ai.request.max_tokens", "temperature": "gen_ai.request.temperature",
                    "top_p": "gen_ai.request.top_p", "seed": "gen_ai.request.seed",
                    "stream": "gen_ai.request.stream"}
        for field, key in sampling.items():
            value = getattr(request, field, None)  # chat and generate have them; choose has none
            if value is not None:
                attributes[key] = value
        if getattr(request, "stop", None):
            attributes["gen_ai.request.stop_sequences"] = list(request.stop)
        return attributes

    # -- process spans -----------------------------------------------------------------------------
    def _process_span(self, proc: Any) -> Span:
        span = self.process_spans.get(proc.pid)
        if span is not None:
            return span
        parent = self.process_spans.get(proc.ppid)
        span = self._tracer.start_span(
            f"invoke_agent {proc.name}", context=Context(),  # a root: one trace per process
            kind=SpanKind.INTERNAL, start_time=_ns(proc.started_at),
            links=[Link(parent.get_span_context())] if parent is not None else (),
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": PROVIDER,
                        "gen_ai.agent.name": proc.name, "gen_ai.agent.id": str(proc.pid), "llmos.pid": proc.pid,
                        "llmos.ppid": proc.ppid, "llmos.process.name": proc.name, "llmos.priority": proc.priority})
        self.process_spans[proc.pid] = span
        self._tg.start_soon(self._end_when_done, proc, span, name=f"llmos-otel-{proc.pid}")
        return span

    async def _end_when_done(self, proc: Any, span: Span) -> None:
        await proc.done.wait()
        self._end_process_span(proc, span, proc.ended_at or time.time())

    def _end_process_span(self, proc: Any, span: Span, at: float) -> None:
        self.process_spans.pop(proc.pid, None)
        stats = proc.stats
        span.set_attributes({"llmos.process.state": proc.state.name, "llmos.syscalls": stats.syscalls,
                             "llmos.usage.prompt_tokens": stats.prompt_tokens,
                             "llmos.usage.completion_tokens": stats.completion_tokens})
        if proc.reason:
            span.set_attribute("llmos.process.reason", proc.reason)
        if proc.state is ProcState.FAILED:
            span.set_status(Status(StatusCode.ERROR, proc.reason or "failed"))
        span.end(end_time=_ns(at))

    def close(self) -> None:
        """End the spans of the processes still running (the export is ending)."""
        now = time.time()
        for pid, span in list(self.process_spans.items()):
            proc = self._procs.live.get(pid)
            if proc is None:
                self.process_spans.pop(pid)
                span.end(end_time=_ns(now))
            else:
                self._end_process_span(proc, span, now)


def _generation_response(answer: Any) -> dict[str, Any]:
    """What a generation's result says: the model, why it stopped, its token usage."""
    if isinstance(answer, Reply):
        return {"gen_ai.response.model": answer.model, "gen_ai.response.finish_reasons": [answer.finish_reason],
                "gen_ai.usage.input_tokens": answer.prompt_tokens,
                "gen_ai.usage.output_tokens": answer.completion_tokens}
    if isinstance(answer, Choice):  # options are scored, not generated: no output tokens
        found = {"gen_ai.usage.input_tokens": answer.prompt_tokens, "gen_ai.usage.output_tokens": 0}
        return found | ({"gen_ai.response.model": answer.model} if answer.model else {})
    if answer is None:  # no result and no error: the caller was cancelled (killed) mid-generation
        return {"gen_ai.response.finish_reasons": ["cancelled"]}
    return {}


@asynccontextmanager
async def instrumented(kernel: Any, tracer_provider: trace.TracerProvider | None = None, *,
                       skip_calls: frozenset[str] = QUIET_CALLS) -> AsyncIterator[KernelTracer]:
    """Export `kernel`'s syscalls as spans to `tracer_provider` (the global one if None) while
    inside. Leaving ends the spans of the processes still running; flushing the provider is
    the caller's (`provider.force_flush()` / `shutdown()`)."""
    provider = tracer_provider or trace.get_tracer_provider()
    listeners: list[Any] = kernel.dispatcher.listeners
    async with anyio.create_task_group() as tg:
        tracer = KernelTracer(kernel, provider.get_tracer("llmos"), tg, skip_calls)
        listeners.append(tracer.on_syscall)
        try:
            yield tracer
        finally:
            listeners.remove(tracer.on_syscall)
            tracer.close()
            tg.cancel_scope.cancel()


def otlp_endpoint() -> str | None:
    """The OTLP endpoint the environment names, if any."""
    return next((os.environ[name].strip() for name in ENDPOINT_VARIABLES if os.environ.get(name, "").strip()), None)


def otlp_exporter() -> SpanExporter | None:
    """An OTLP span exporter if the environment names an endpoint, else None. The exporter
    reads its endpoint, headers and timeout from the environment itself."""
    if otlp_endpoint() is None:
        return None
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol != "http/protobuf":
        raise llmos.ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: llmos exports by 'http/protobuf' or "
                                "'grpc'")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def tracer_provider(exporter: SpanExporter) -> TracerProvider:
    """A provider batching spans to `exporter`, as service OTEL_SERVICE_NAME (default "llmos")."""
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "llmos"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


@asynccontextmanager
async def exporting(kernel: Any) -> AsyncIterator[KernelTracer | None]:
    """OTLP export of `kernel`'s syscalls while inside, if the environment names an endpoint
    (see the module's docstring); yields None otherwise. Leaving flushes what is pending."""
    exporter = otlp_exporter()
    if exporter is None:
        yield None
        return
    provider = tracer_provider(exporter)
    log.info("exporting traces by OTLP to %s", otlp_endpoint())
    try:
        async with instrumented(kernel, provider) as tracer:
            yield tracer
    finally:
        with anyio.CancelScope(shield=True):  # the exporter's own timeout bounds this
            await anyio.to_thread.run_sync(provider.shutdown)
