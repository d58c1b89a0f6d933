"""Talking to an OpenAI-compatible server, apart from streaming a job (llmos.drivers.remote):
finding the model and its context length, counting tokens with the server's tokenizer,
and reading its events and its refusals."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import sniffio

from llmos.drivers.errors import ModelUnavailable
from llmos.kernel.model import ChatMessage

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 60.0  # a server's Retry-After is honoured up to this
TOKENIZE_TIMEOUT_S = 5.0  # a token count blocks its caller: it never waits on the server for long
TOKENIZE_PAUSE_S = 30.0  # after a failed count, estimate for this long before asking the server again
TOKENIZE_CACHE = 1024  # chats whose counts are kept (a context window asks for the same ones often)
# Estimates, where the server cannot count: over-estimates on purpose, so a prompt that the
# estimate lets through fits. English runs at about 4 characters a token, code at about 3.
CHARS_PER_TOKEN = 3
MESSAGE_FRAME_TOKENS = 8  # what a chat template adds around each message (ChatML adds 5)
PROMPT_FRAME_TOKENS = 32  # and once per prompt: the generation prompt, a default system prompt
PLACEHOLDER_ID = -1  # stands for a token the driver counts but does not know


@dataclass(frozen=True)
class ServerInfo:
    """What the driver learnt from the server when it connected."""

    model: str  # the server's id of the model
    context_length: int | None  # as the server reports it, if it does


# -- connecting ---------------------------------------------------------------------------------
def discover(http: httpx.Client, base_url: str, model: str | None) -> ServerInfo:
    """The model's entry in the server's `GET /models` (None: its only model)."""
    try:
        response = http.get(f"{base_url}/models")
    except httpx.HTTPError as exc:
        raise ModelUnavailable(f"cannot reach the model server at {base_url}: {describe(exc)}") from None
    if response.status_code == 404 and model is not None:
        return ServerInfo(model, None)  # a server that lists nothing may still serve it
    if response.status_code >= 400:
        hint = "" if base_url.endswith("/v1") else " (does base_url need to end in /v1?)"
        raise ModelUnavailable(f"{base_url}/models answered HTTP {response.status_code}{hint}: {_message(response)}")
    entries = {e["id"]: e for e in json_body(response).get("data", []) if isinstance(e, dict) and "id" in e}
    if model is None:
        if len(entries) != 1:
            raise ModelUnavailable(f"{base_url} serves {len(entries)} models ({', '.join(entries) or 'none'}); "
                                   "name the one to use")
        model = next(iter(entries))
    entry = entries.get(model) or next((e for e in entries.values() if model in (e.get("aliases") or ())), None)
    if entry is None:
        raise ModelUnavailable(f"{base_url} does not serve {model!r}; it serves: {', '.join(entries) or 'nothing'}")
    return ServerInfo(model, reported_context_length(entry))


def reported_context_length(entry: dict[str, Any]) -> int | None:
    """A `/models` entry's context length: vLLM's and llmos's `max_model_len`, llmos's
    `context_length`, llama-server's `meta.n_ctx` (else the trained `n_ctx_train`)."""
    meta = entry.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    for value in (entry.get("max_model_len"), entry.get("context_length"), meta.get("n_ctx"), meta.get("n_ctx_train")):
        if isinstance(value, int) and value > 1:
            return value
    return None


_CONTEXT_SAID = (re.compile(r"maximum context length is (\d+)"),  # OpenAI, vLLM, llama-cpp-python
                 re.compile(r"context (?:window|length|size) (?:is|of) (\d+)"))  # llmos, others


def context_length_in(error: dict[str, Any]) -> int | None:
    """The context window a server's refusal names, if it names one."""
    if isinstance(error.get("n_ctx"), int):  # llama-server
        return error["n_ctx"]
    for pattern in _CONTEXT_SAID:
        if found := pattern.search(str(error.get("message", ""))):
            return int(found.group(1))
    return None


# -- token counts -------------------------------------------------------------------------------
def on_event_loop() -> bool:
    """Whether the caller runs on an event loop's thread (where nothing may block)."""
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


def estimate_text(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_chat(messages: Sequence[ChatMessage]) -> int:
    return PROMPT_FRAME_TOKENS + sum(MESSAGE_FRAME_TOKENS + estimate_text(m.content) for m in messages)


class ServerTokenizer:
    """Token counts from the server's own tokenizer where it has an endpoint, else estimates.

    - `POST /tokenize` with `messages` (vLLM; `llmos serve`): the server applies its chat
      template, so a chat's count is exact, and so is a raw prompt's (with `prompt`).
    - `POST /tokenize` with `content` (llama-server) or `POST /extras/tokenize` with `input`
      (llama-cpp-python): raw text only. A chat's count is its messages' text, counted
      exactly, plus the estimated framing of a chat template the server does not show.
    - none (Ollama, OpenAI, ...): estimates (`estimate_text`, `estimate_chat`).

    A count asked on an event loop never waits on the network (a context window counts short
    texts inline): it is the cached count of the same chat, else an estimate. Short texts are
    the ones far from the context limit, and long ones are counted in worker threads, where
    the server is asked. There a count waits at most TOKENIZE_TIMEOUT_S; after a failure,
    counts are estimated for TOKENIZE_PAUSE_S. An estimate's ids are PLACEHOLDER_IDs.
    """

    DIALECTS = ("vllm", "llama-server", "llama-cpp-python", "none")

    def __init__(self, http: httpx.Client, root: str, model: str, dialect: str | None = None) -> None:
        self.http, self.root, self.model = http, root, model
        self.dialect = dialect if dialect is not None else self._probe()
        self._paused_until = 0.0
        self._refused: set[str] = set()  # "chat" / "text": what the endpoint answered 4xx to
        self._cache: OrderedDict[tuple[ChatMessage, ...], tuple[int, ...]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        key = tuple(messages)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return list(self._cache[key])
        ids = None if on_event_loop() else self._chat_from_server(key)
        if ids is None:
            return [PLACEHOLDER_ID] * estimate_chat(messages)
        with self._cache_lock:
            self._cache[key] = tuple(ids)
            while len(self._cache) > TOKENIZE_CACHE:
                self._cache.popitem(last=False)
        return ids

    def text(self, text: str) -> list[int]:
        ids = None if self.dialect == "none" or on_event_loop() else self._ask("text", *self._text_request(text))
        return ids if ids is not None else [PLACEHOLDER_ID] * estimate_text(text)

    def _chat_from_server(self, messages: tuple[ChatMessage, ...]) -> list[int] | None:
        if self.dialect == "vllm":
            body = {"model": self.model, "messages": [m.model_dump() for m in messages], "add_generation_prompt": True}
            return self._ask("chat", f"{self.root}/tokenize", body)
        if self.dialect == "none":
            return None
        text = self._ask("text", *self._text_request("\n".join(m.content for m in messages)))
        framing = PROMPT_FRAME_TOKENS + MESSAGE_FRAME_TOKENS * len(messages)
        return None if text is None else text + [PLACEHOLDER_ID] * framing

    def _text_request(self, text: str) -> tuple[str, dict[str, Any]]:
        if self.dialect == "vllm":
            return f"{self.root}/tokenize", {"model": self.model, "prompt": text}
        if self.dialect == "llama-server":
            return f"{self.root}/tokenize", {"content": text}
        return f"{self.root}/extras/tokenize", {"input": text}

    def _ask(self, kind: str, url: str, body: dict[str, Any]) -> list[int] | None:
        """The server's token ids, or None (then the caller estimates)."""
        if kind in self._refused or time.monotonic() < self._paused_until:
            return None
        try:
            response = self.http.post(url, json=body, timeout=TOKENIZE_TIMEOUT_S)
            if response.status_code in (400, 404, 405, 422):  # it cannot count this kind: never ask again
                self._refused.add(kind)
                log.info("%s does not count %s tokens (HTTP %d): estimating", url, kind, response.status_code)
                return None
            response.raise_for_status()
            tokens = json_body(response)["tokens"]
            return [t if isinstance(t, int) else t["id"] for t in tokens]  # llama-server may give {id, piece}
        except (httpx.HTTPError, KeyError, TypeError) as exc:
            self._paused_until = time.monotonic() + TOKENIZE_PAUSE_S
            log.warning("%s could not count tokens (%s); estimating for %.0f s", url, describe(exc), TOKENIZE_PAUSE_S)
            return None

    def _probe(self) -> str:
        """The first tokenize endpoint that answers a tiny request, in DIALECTS' order."""
        hello = [{"role": "user", "content": "Hi"}]
        for dialect, path, body in (("vllm", "/tokenize", {"model": self.model, "messages": hello}),
                                    ("llama-server", "/tokenize", {"content": "Hi"}),
                                    ("llama-cpp-python", "/extras/tokenize", {"input": "Hi"})):
            try:
                response = self.http.post(self.root + path, json=body, timeout=TOKENIZE_TIMEOUT_S)
            except httpx.HTTPError:
                break  # the server is unreachable: no endpoint to find
            if response.status_code == 200 and isinstance(json_body(response).get("tokens"), list):
                return dialect
        return "none"


# -- reading replies ------------------------------------------------------------------------------
def retry_after(value: str | None) -> float | None:
    """A Retry-After header's delay in seconds (it may be a number or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


async def events(response: httpx.Response) -> AsyncIterator[str]:
    """The data of each server-sent event; a reply that is plain JSON is one event."""
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        yield (await response.aread()).decode()
        return
    lines: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
        elif not line and lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def error_body(response: httpx.Response) -> dict[str, Any]:
    """The error object of a refusal: OpenAI's {"error": {...}}, FastAPI's {"detail": ...}, or the text."""
    body = json_body(response)
    if isinstance(body.get("error"), dict):
        return body["error"]
    if isinstance(body.get("error"), str):
        return {"message": body["error"]}
    if "detail" in body:
        return {"message": json.dumps(body["detail"]) if not isinstance(body["detail"], str) else body["detail"]}
    return {"message": response.text[:500]}


def _message(response: httpx.Response) -> str:
    return str(error_body(response).get("message") or response.reason_phrase)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
