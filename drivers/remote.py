"""A model served by an OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama, another
`llmos serve`), as a `ModelDriver`: processes use it through the same syscalls, and the
kernel's scheduling, quotas and accounting apply as to a local model.

How a remote server maps onto the step-shaped driver interface:

- Each job the scheduler runs gets one streaming HTTP request (chat completions for
  `job.messages`, completions for `job.prompt`), started the first step it runs. The
  streams live on the driver's own event loop, in a daemon thread, so they go on between
  steps: a preempted job keeps buffering (the server goes on generating it: preemption
  frees nothing on a remote server); a cancelled job has its stream closed, at its next
  step or within CANCEL_POLL_S when no step runs it.
- `step` waits until a running job has news (at most STEP_WAIT_S, so the serve loop comes
  back to admit newcomers), then hands on the text each job gained. The server batches;
  `max_batch` is this driver's concurrency limit, so the scheduler never runs more (though
  under a preempting policy the streams of preempted jobs stay open beside them).
- Token ids: a remote model's ids mean nothing to the kernel, so `job.token_ids` holds
  PLACEHOLDER_ID entries and only its length counts: the content chunks received so far,
  then the server's own count (`stream_options.include_usage`) once it reports one; the
  prompt's length is corrected to the server's count likewise. Accounting and quotas thus
  count the server's tokens wherever it reports them.
- Token counts before a request (context windows, `prepare`): see
  `llmos.drivers.remote_server.ServerTokenizer`.
- Errors: connection failures, timeouts, 429 and 5xx (or an error event of those kinds in a
  stream, see TRANSIENT_ERROR_CODES) are retried with exponential backoff
  (honouring Retry-After), up to `retries` times, and only before any text arrived; then the
  job ends with finish_reason "error" and `job.error` says what happened (the kernel raises
  ModelError). A refusal that names the server's context window teaches the driver that
  size, so later prompts that cannot fit fail early, at `prepare`, with ContextOverflow.
- `choose` cannot work here: an OpenAI-compatible server does not score given continuations
  of a prompt. `prepare` refuses a job with options (InvalidRequest), and `can_score = False`
  tells the composition root to have tool choices generated as constrained JSON instead.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from llmos.drivers.remote_server import (
    PLACEHOLDER_ID, ServerTokenizer, context_length_in, describe, discover, error_body, events, retry_after)
from llmos.kernel.errors import ConfigError, ContextOverflow, InvalidRequest
from llmos.kernel.model import ChatMessage, EmitFn, FinishReason, GenerationJob

# -- limits and defaults ----------------------------------------------------------------------
DEFAULT_CONTEXT_LENGTH = 4096  # when neither the server nor the configuration says (a refusal teaches the truth)
DEFAULT_MAX_CONCURRENCY = 16  # streams at once, unless configured
DEFAULT_TIMEOUT_S = 120.0  # the longest silence on a stream, waiting for a busy server's first token included
CONNECT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3  # after the first attempt, for a failure before any text came
BACKOFF_S = 0.5  # the first retry's delay; each next one doubles it (with jitter), up to MAX_BACKOFF_S
MAX_BACKOFF_S = 16.0
STEP_WAIT_S = 0.05  # a step waits at most this long for news, so newly queued jobs start soon
STEP_GATHER_S = 0.01  # after the first news, a step waits this long for more (fewer, fuller steps)
# An error event in a stream with one of these codes is the server's transient failure (llmos
# sends errno names; OpenAI "server_error"), retried as a 5xx refusal is while no text came.
TRANSIENT_ERROR_CODES = frozenset({"EIO", "EAGAIN", "server_error"})
CANCEL_POLL_S = 0.05  # a job cancelled while no step runs it has its stream closed within this


# -- one job's stream ---------------------------------------------------------------------------
class _Failure(Exception):
    """A request that failed; `retry` if trying again may help, after `retry_after` seconds
    if the server said; `unstream` if the retry should not stream (see `_attempts`)."""

    def __init__(self, message: str, *, retry: bool, retry_after: float | None = None, unstream: bool = False) -> None:
        super().__init__(message)
        self.retry, self.retry_after, self.unstream = retry, retry_after, unstream


@dataclass(eq=False)
class _Stream:
    """One job's HTTP stream: what the server sent so far. The driver's IO thread writes it,
    a step reads it, both under the driver's lock; `emitted` is the step's alone."""

    job: GenerationJob
    url: str
    body: dict[str, Any]
    text: str = ""
    chunks: int = 0  # content chunks received: about one token each
    prompt_tokens: int | None = None  # the server's counts, once it reports them
    completion_tokens: int | None = None
    finish: str | None = None  # the server's finish_reason
    error: str | None = None
    ended: bool = False
    news: int = 0  # events received; a step has news of this stream while `seen` lags behind
    seen: int = 0
    emitted: int = 0
    task: Future[None] | None = None

    def outcome(self) -> tuple[FinishReason, str | None]:
        if self.error is not None:
            return "error", self.error
        if self.finish is None:
            return "error", "the server's stream ended before the reply did"
        return ("length" if self.finish == "length" else "stop"), None


def resize(ids: list[int], length: int) -> None:
    """Make `ids` `length` long: cut it, or pad it with PLACEHOLDER_IDs."""
    del ids[length:]
    ids.extend([PLACEHOLDER_ID] * (length - len(ids)))


# -- the driver ---------------------------------------------------------------------------------
class RemoteDriver:
    """A model on an OpenAI-compatible server at `base_url` (".../v1"), `model` being the
    server's id for it (None: the server's only model). Connecting asks the server for the
    model and its context length: blocking, and ModelUnavailable if it cannot be reached or
    does not serve the model. `context_length`: the configured window (the smaller of it and
    what the server reports counts; neither: DEFAULT_CONTEXT_LENGTH). `max_concurrency`:
    requests at once (the scheduler's batch). `timeout_s`: the longest silence on a stream;
    `connect_timeout_s`: to connect. `retries`, `backoff_s`: see the module's docstring.
    `tokenizer`: how to count tokens, one of ServerTokenizer.DIALECTS (None: probe the server).
    `close()` ends its IO thread (a daemon thread, started by the first step)."""

    can_score = False  # see the module's docstring: `choose` needs a local model

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, *,
                 context_length: int | None = None, max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
                 timeout_s: float = DEFAULT_TIMEOUT_S, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, backoff_s: float = BACKOFF_S, name: str | None = None,
                 tokenizer: str | None = None) -> None:
        _check_settings(base_url, context_length, max_concurrency, timeout_s, connect_timeout_s, retries, backoff_s,
                        tokenizer)
        self.base_url = base_url.rstrip("/")
        self.root = self.base_url.removesuffix("/v1")  # where vLLM and llama.cpp put /tokenize
        self.retries, self.backoff_s = retries, backoff_s
        self.max_batch = max_concurrency
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._http = httpx.Client(headers=self._headers, timeout=self._timeout)  # thread-safe: counts, connecting
        self.server = discover(self._http, self.base_url, model)
        self.model = self.server.model
        self.name = name or self.model
        known = [n for n in (self.server.context_length, context_length) if n is not None]
        self.context_length = min(known) if known else DEFAULT_CONTEXT_LENGTH
        self.tokenizer = ServerTokenizer(self._http, self.root, self.model, tokenizer)
        self._lock = threading.Condition()  # guards every _Stream and the counters
        self._live: dict[_Stream, anyio.CancelScope] = {}  # the IO loop's own: streams whose request goes on
        self._io: BlockingPortal | None = None
        self._watcher: Future[None] | None = None
        self._io_cm: AbstractContextManager[BlockingPortal] | None = None
        self._client: httpx.AsyncClient | None = None
        self._counters = {"requests": 0, "retries": 0, "failures": 0}

    def __repr__(self) -> str:
        return f"<RemoteDriver {self.name}: {self.model} at {self.base_url}, context {self.context_length}>"

    # -- prompts ------------------------------------------------------------------------------
    def tokenize(self, messages: Sequence[ChatMessage]) -> list[int]:
        return self.tokenizer.chat(messages)

    def tokenize_text(self, text: str) -> list[int]:
        """A raw prompt's token ids (no chat template), as `prepare` counts a `generate`."""
        return self.tokenizer.text(text)

    def prepare(self, job: GenerationJob) -> None:
        if job.options is not None:
            raise InvalidRequest(f"{self.name} is served by {self.base_url}, and an OpenAI-compatible server cannot "
                                 "score options: `choose` needs a local model")
        if job.messages is None and job.sampling.json_schema is not None:
            raise InvalidRequest(f"{self.name} is served by {self.base_url}, whose completions endpoint takes no "
                                 "JSON schema: ask for JSON with `chat` instead of `generate`")
        if not job.prompt_ids or set(job.prompt_ids) == {PLACEHOLDER_ID}:  # none, or estimated on an event loop
            job.prompt_ids = (self.tokenize(job.messages) if job.messages is not None
                              else self.tokenize_text(job.prompt or ""))
        if len(job.prompt_ids) >= self.context_length:
            raise ContextOverflow(f"the prompt is {len(job.prompt_ids)} tokens; {self.name}'s context window is "
                                  f"{self.context_length}, leaving no room for a reply")

    # -- decoding ---------------------------------------------------------------------------------
    async def step(self, running: Sequence[GenerationJob], emit: EmitFn) -> None:
        """Start the streams of jobs running for the first time, wait for news of any running
        job (at most STEP_WAIT_S), and hand on what each gained. Cancelled jobs' streams close."""
        streams = []
        for job in running:
            if job.cancelled:
                self._close(job.driver_state)
                job.finish_reason = "cancelled"
            else:
                streams.append(self._stream_of(job))
        if streams:
            await anyio.to_thread.run_sync(self._wait_for_news, streams, abandon_on_cancel=True)
        emit([piece for stream in streams if (piece := self._harvest(stream)) is not None])

    def _stream_of(self, job: GenerationJob) -> _Stream:
        if isinstance(job.driver_state, _Stream):
            return job.driver_state
        url, body = self.request(job)
        stream = job.driver_state = _Stream(job, url, body)
        stream.task = self._portal().start_task_soon(self._pump, stream)
        return stream

    def _close(self, stream: Any) -> None:
        if isinstance(stream, _Stream):
            if stream.task is not None:
                stream.task.cancel()  # the IO loop cancels the request, which closes the connection
            stream.job.driver_state = None

    def _wait_for_news(self, streams: list[_Stream]) -> None:
        """In a worker thread: until a stream has news, or STEP_WAIT_S pass."""
        with self._lock:
            if not self._lock.wait_for(lambda: any(s.news != s.seen for s in streams), STEP_WAIT_S):
                return
        time.sleep(STEP_GATHER_S)

    def _harvest(self, stream: _Stream) -> tuple[GenerationJob, str] | None:
        """Bring the job up to date with its stream; its new text, if any."""
        job = stream.job
        with self._lock:
            stream.seen = stream.news
            text, ended = stream.text, stream.ended
            resize(job.token_ids, stream.completion_tokens if stream.completion_tokens is not None else stream.chunks)
            if ended and stream.prompt_tokens is not None:
                resize(job.prompt_ids, stream.prompt_tokens)
        piece, stream.emitted = text[stream.emitted:], len(text)
        job.text = text
        if ended:
            job.finish_reason, job.error = stream.outcome()
            job.driver_state = None
        return (job, piece) if piece else None

    # -- HTTP -------------------------------------------------------------------------------------
    def request(self, job: GenerationJob) -> tuple[str, dict[str, Any]]:
        """The URL and body of the streaming request that serves `job`."""
        sampling = job.sampling
        body: dict[str, Any] = {"model": self.model, "stream": True, "stream_options": {"include_usage": True},
                                "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
                                "top_p": sampling.top_p}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if job.messages is None:
            return f"{self.base_url}/completions", {**body, "prompt": job.prompt or ""}
        body["messages"] = [message.model_dump() for message in job.messages]
        if sampling.json_schema is not None:
            body["response_format"] = self._response_format(sampling.json_schema)
        return f"{self.base_url}/chat/completions", body

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.tokenizer.dialect == "llama-cpp-python":  # its older form (Anyscale's): no "json_schema" type
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}

    def _portal(self) -> BlockingPortal:
        """The IO thread's event loop, started on first use."""
        with self._lock:  # kernels on several event loops may share the driver
            if self._io is None:
                self._io = self._start_io()
            return self._io

    def _start_io(self) -> BlockingPortal:
        self._io_cm = start_blocking_portal(name=f"llmos-remote-{self.name}")
        io = self._io_cm.__enter__()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=self.max_batch)
        self._client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout, limits=limits)
        self._watcher = io.start_task_soon(self._close_cancelled)
        return io

    async def _close_cancelled(self) -> None:
        """On the IO thread, for good: close the streams of jobs cancelled while no step ran
        them (queued, preempted, or the kernel idle), within CANCEL_POLL_S."""
        while True:
            await anyio.sleep(CANCEL_POLL_S)
            for stream, scope in list(self._live.items()):
                if stream.job.cancelled:
                    scope.cancel()

    async def _pump(self, stream: _Stream) -> None:
        """On the IO thread: the job's request, retried while that may help, into `stream`;
        `stream.ended` once it is over, however it ended."""
        scope = self._live[stream] = anyio.CancelScope()
        try:
            with scope:
                await self._attempts(stream, stream.body)
        except Exception as exc:  # noqa: BLE001 - a bad reply fails its job, never the IO loop
            self._fail(stream, f"{self.name} at {self.base_url}: {type(exc).__name__}: {exc}")
        finally:
            del self._live[stream]
            with self._lock:
                stream.ended, stream.news = True, stream.news + 1
                self._lock.notify_all()

    async def _attempts(self, stream: _Stream, body: dict[str, Any]) -> None:
        """Retries follow the module's docstring. A stream that ends before its first event
        is retried at once without streaming: some servers (llama-cpp-python) fail a streamed
        request only after answering 200, so its error, a context overflow say, shows in a
        plain request alone; and a plain reply still serves the job, all at once."""
        for attempt in range(self.retries + 1):
            try:
                await self._request(stream, body)
                return
            except _Failure as exc:
                if not exc.retry or stream.text or attempt == self.retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    self._fail(stream, f"{self.name} at {self.base_url}: {exc}{tries}")
                    return
                delay = 0.0 if exc.unstream else self._delay(attempt, exc.retry_after)
                if exc.unstream:
                    body = {k: v for k, v in body.items() if k != "stream_options"} | {"stream": False}
            self._count("retries")
            await anyio.sleep(delay)

    async def _request(self, stream: _Stream, body: dict[str, Any]) -> None:
        assert self._client is not None
        self._count("requests")
        received = 0
        try:
            async with self._client.stream("POST", stream.url, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._refusal(response)
                async for data in events(response):
                    received += 1
                    if data == "[DONE]":  # the end, even from a server that gave no finish_reason
                        stream.finish = stream.finish or "stop"
                        break
                    self._take(stream, json.loads(data))
                    if stream.job.cancelled:
                        return
        except httpx.TransportError as exc:  # connecting, timeouts, a broken connection
            raise _Failure(describe(exc), retry=True) from None
        if stream.finish is None:
            raise _Failure("the stream ended before the reply did", retry=True, unstream=not received)

    def _take(self, stream: _Stream, event: dict[str, Any]) -> None:
        """One chunk of the server's reply (or the whole of a reply that was not streamed)."""
        if isinstance(event.get("error"), dict):  # an error after the response began
            error = event["error"]
            raise _Failure(str(error.get("message") or error), retry=error.get("code") in TRANSIENT_ERROR_CODES)
        choice = (event.get("choices") or [{}])[0]
        delta = choice.get("delta") or choice.get("message") or {}
        piece = delta.get("content") or choice.get("text") or ""
        usage = event.get("usage") or {}
        with self._lock:
            stream.text += piece
            stream.chunks += bool(piece)
            stream.finish = choice.get("finish_reason") or stream.finish
            stream.prompt_tokens = usage.get("prompt_tokens", stream.prompt_tokens)
            stream.completion_tokens = usage.get("completion_tokens", stream.completion_tokens)
            stream.news += 1
            self._lock.notify_all()

    def _refusal(self, response: httpx.Response) -> _Failure:
        status = response.status_code
        error = error_body(response)
        said = f"HTTP {status}: {error.get('message') or response.reason_phrase}"
        if status == 429 or status >= 500:
            return _Failure(said, retry=True, retry_after=retry_after(response.headers.get("retry-after")))
        learned = context_length_in(error) if status in (400, 413, 422) else None
        if learned is not None and 1 < learned < self.context_length:
            self.context_length = learned  # smaller than believed: later prompts are checked against it
            said += f" (the server's context window is {learned} tokens; prompts are now checked against it)"
        return _Failure(said, retry=False)

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return retry_after_s
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)

    def _fail(self, stream: _Stream, message: str) -> None:
        self._count("failures")
        with self._lock:
            stream.error = message

    def _count(self, counter: str) -> None:
        with self._lock:
            self._counters[counter] += 1

    # -- the rest ---------------------------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        """What `top` shows of this driver: requests going on, requests made, retries, failed jobs."""
        with self._lock:
            return {"streams": len(self._live), **self._counters}

    def close(self) -> None:
        """Close every stream and end the IO thread, once the kernels using the driver have
        ended. The driver may be used again afterwards (a new IO thread starts)."""
        io, cm, client, watcher = self._io, self._io_cm, self._client, self._watcher
        self._io = self._io_cm = self._client = self._watcher = None
        if io is None or cm is None or client is None or watcher is None:
            return
        io.call(self._cancel_all)
        watcher.cancel()
        io.call(client.aclose)
        cm.__exit__(None, None, None)  # waits for the cancelled requests to wind down

    def _cancel_all(self) -> None:
        for scope in self._live.values():
            scope.cancel()


def _check_settings(base_url: str, context_length: int | None, max_concurrency: int, timeout_s: float,
                    connect_timeout_s: float, retries: int, backoff_s: float, tokenizer: str | None) -> None:
    problems = [
        (not re.match(r"^https?://[^/]", base_url), f"base_url {base_url!r} is not an http(s) URL"),
        (context_length is not None and context_length < 2, "context_length must be at least 2"),
        (max_concurrency < 1, "max_concurrency must be at least 1"),
        (timeout_s <= 0 or connect_timeout_s <= 0, "timeouts must be positive"),
        (retries < 0 or backoff_s < 0, "retries and backoff_s must not be negative"),
        (tokenizer not in (None, *ServerTokenizer.DIALECTS),
         f"tokenizer must be one of {', '.join(ServerTokenizer.DIALECTS)}"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(message)
