"""The OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions,
/v1/embeddings.

Each completion runs as a kernel process (a child of the daemon, named after the endpoint),
so concurrent clients are batched together by the scheduler and visible in `ps`; what a
request may do is `model.generate` and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from llmos.server import errors
from llmos.server.gateway import Gateway
from llmos.server.hangup import unless_hung_up
from llmos.server.openai_schema import (
    FINISH, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Message, Usage, completion_id, now,
    tool_calls_out)
from llmos.syscalls import ChatMessage, Reply, Sys, SyscallError, ToolSpec

router = APIRouter()
REQUEST_CAPS = frozenset({"model.generate"})  # all a completion's process may do
_STARTED = object()  # a stream's first item: the generation was accepted (headers may go out)


@dataclass(frozen=True)
class ServedModel:
    """A model this daemon answers for, under its name and aliases."""

    id: str
    context_length: int
    aliases: tuple[str, ...] = ()
    kind: str = "chat"  # or "embedding"
    created: int = field(default_factory=now)
    # Not the kernel's own model (a variant of it, or a model of another base the kernel
    # loads on demand): its requests' processes move to it (`set_model`) before they generate.
    variant: bool = False

    def listing(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "llmos",
                "context_length": self.context_length, "max_model_len": self.context_length,
                "aliases": list(self.aliases), "kind": self.kind}


@dataclass
class OpenAIState:
    gateway: Gateway
    models: list[ServedModel]
    embedder: Any = None  # llmos.kernel.model.Embedder, None without one
    # Besides `models`, with their context lengths (read when asked: a fine-tune made while
    # the daemon runs is served at once): `listed`, what /v1/models shows (the variants of
    # the kernel's model and the other models it has loaded now); `loadable`, every other
    # model a request may name (the library's: loaded on demand).
    listed: Callable[[], list[tuple[str, int | None]]] = lambda: []
    loadable: Callable[[], list[tuple[str, int | None]]] = lambda: []

    def all_models(self) -> list[ServedModel]:
        return self._with(self.listed())

    def _with(self, others: list[tuple[str, int | None]]) -> list[ServedModel]:
        chat = next((m for m in self.models if m.kind == "chat"), None)
        if chat is None:
            return list(self.models)
        return [*self.models, *(ServedModel(id=name, context_length=length or chat.context_length, variant=True)
                                for name, length in others if name != chat.id)]

    def find(self, name: str, kind: str) -> ServedModel:
        served = self.all_models()
        for model in [*served, *(self._with(self.loadable()) if kind == "chat" else [])]:
            if model.kind == kind and (name == model.id or name in model.aliases):
                return model
        raise errors.model_not_found(name, [m.id for m in served if m.kind == kind])


def _state(request: Request) -> OpenAIState:
    return request.app.state.openai


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model.listing() for model in _state(request).all_models()]}


@router.get("/v1/models/{name:path}")
async def get_model(name: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    for model in state.all_models():
        if name == model.id or name in model.aliases:
            return model.listing()
    raise errors.model_not_found(name, [m.id for m in state.all_models()])


# -- chat ----------------------------------------------------------------------------------
def chat_message(message: Message) -> ChatMessage:
    """An OpenAI message as llmos's: a tool call the assistant made is written as the JSON
    llmos's own conversations record it with ({"tool": ..., "arguments": ...})."""
    role = "system" if message.role == "developer" else message.role
    if message.role == "assistant" and message.tool_calls:
        calls = []
        for call in message.tool_calls:
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except json.JSONDecodeError:
                raise errors.invalid("messages", f"tool call {call.function.name!r} has arguments that are "
                                     "not JSON") from None
            calls.append(json.dumps({"tool": call.function.name, "arguments": arguments}))
        text = "\n".join(filter(None, [message.text(), *calls]))
        return ChatMessage(role="assistant", content=text)
    return ChatMessage(role=role, content=message.text())


def chat_fields(body: ChatCompletionRequest, model: ServedModel) -> dict[str, Any]:
    """The `chat` syscall's fields for a chat completion request."""
    body.check_supported()
    fields: dict[str, Any] = {"messages": [chat_message(m) for m in body.messages],
                              **body.sampling(default_max_tokens=model.context_length)}
    schema = body.response_format.schema_or_none() if body.response_format else None
    if schema is not None:
        fields["json_schema"] = schema
    choice = body.tool_choice_name()
    if body.tools and choice != "none":
        if schema is not None:
            raise errors.invalid("response_format", "response_format cannot be combined with tools here")
        fields["functions"] = [ToolSpec(name=t.function.name, description=t.function.description,
                                        parameters=t.function.parameters) for t in body.tools]
        fields["tool_choice"] = choice
    return fields


def chat_completion(reply: Reply, cid: str, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    finish = FINISH[reply.finish_reason]
    if reply.tool_calls:
        message = {"role": "assistant", "content": None, "tool_calls": tool_calls_out(reply.tool_calls)}
        finish = "tool_calls"
    return {"id": cid, "object": "chat.completion", "created": now(), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": Usage.of(reply.prompt_tokens, reply.completion_tokens).model_dump()}


async def on_model(sys: Sys, model: ServedModel) -> None:
    """Move the request's process to the model it asked for, when that is a variant."""
    if model.variant:
        await sys.set_model(model.id)


async def _chat(sys: Sys, model: ServedModel, fields: dict[str, Any]) -> Reply:
    await on_model(sys, model)
    return await sys.chat(**fields)


async def _chat_pieces(sys: Sys, model: ServedModel, fields: dict[str, Any]) -> AsyncIterator[Any]:
    """_STARTED, then the text pieces, then the Reply (alone, when a tool was called)."""
    await on_model(sys, model)
    result = await sys.chat(**fields, stream=True)
    yield _STARTED
    if isinstance(result, Reply):
        yield result
        return
    async for piece in result:
        yield piece
    yield result.reply


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    state = _state(request)
    model = state.find(body.model, "chat")
    fields = chat_fields(body, model)
    cid = completion_id("chatcmpl")
    if not body.stream:
        reply = await unless_hung_up(request, lambda: state.gateway.call("openai.chat",
                                                                          lambda sys: _chat(sys, model, fields),
                                                                          REQUEST_CAPS))
        return chat_completion(reply, cid, model.id)
    items = await state.gateway.stream("openai.chat", lambda sys: _chat_pieces(sys, model, fields), REQUEST_CAPS)
    return _sse(_chat_chunks(items, cid, model.id, body.include_usage))


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": now(), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


async def _chat_chunks(items: AsyncIterator[Any], cid: str, model: str, usage: bool) -> AsyncIterator[dict[str, Any]]:
    async for item in items:
        if item is _STARTED:
            yield _chunk(cid, model, {"role": "assistant", "content": ""})
        elif isinstance(item, str):
            yield _chunk(cid, model, {"content": item})
        else:  # the Reply: the end
            if item.tool_calls:
                calls = [{"index": i, **call} for i, call in enumerate(tool_calls_out(item.tool_calls))]
                yield _chunk(cid, model, {"tool_calls": calls})
                yield _chunk(cid, model, {}, "tool_calls")
            else:
                yield _chunk(cid, model, {}, FINISH[item.finish_reason])
            if usage:
                yield {"id": cid, "object": "chat.completion.chunk", "created": now(), "model": model,
                       "choices": [], "usage": Usage.of(item.prompt_tokens, item.completion_tokens).model_dump()}


# -- completions ---------------------------------------------------------------------------
async def _generate_all(sys: Sys, model: ServedModel, prompts: list[str],
                        sampling: dict[str, Any]) -> AsyncIterator[Any]:
    """(index, piece) and (index, Reply) for each prompt. All are queued before any is read,
    so they generate together in one batch; streams are read one after the other (a later
    one's text waits in its job's outbox meanwhile)."""
    await on_model(sys, model)
    results = [await sys.generate(prompt, **sampling, stream=True) for prompt in prompts]
    yield _STARTED
    for index, result in enumerate(results):
        if isinstance(result, Reply):
            yield index, result
            continue
        async for piece in result:
            yield index, piece
        yield index, result.reply


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = _state(request)
    model = state.find(body.model, "chat")
    body.check_supported()
    prompts = body.prompts()
    sampling = body.sampling(default_max_tokens=model.context_length)
    cid = completion_id("cmpl")
    items = await state.gateway.stream("openai.completion",
                                       lambda sys: _generate_all(sys, model, prompts, sampling), REQUEST_CAPS)
    if body.stream:
        return _sse(_completion_chunks(items, cid, model.id, body.include_usage))
    replies: dict[int, Reply] = {}

    async def collect() -> None:
        async with contextlib.aclosing(items):  # closing it kills the process
            async for item in items:
                if item is not _STARTED and isinstance(item[1], Reply):
                    replies[item[0]] = item[1]

    await unless_hung_up(request, collect)
    choices = [{"index": i, "text": r.text, "finish_reason": FINISH[r.finish_reason], "logprobs": None}
               for i, r in sorted(replies.items())]
    usage = Usage.of(sum(r.prompt_tokens for r in replies.values()), sum(r.completion_tokens for r in replies.values()))
    return {"id": cid, "object": "text_completion", "created": now(), "model": model.id, "choices": choices,
            "usage": usage.model_dump()}


async def _completion_chunks(items: AsyncIterator[Any], cid: str, model: str,
                             usage: bool) -> AsyncIterator[dict[str, Any]]:
    prompt_tokens = completion_tokens = 0
    async for item in items:
        if item is _STARTED:
            continue
        index, piece = item
        chunk = {"id": cid, "object": "text_completion", "created": now(), "model": model}
        if isinstance(piece, str):
            yield {**chunk, "choices": [{"index": index, "text": piece, "finish_reason": None, "logprobs": None}]}
        else:
            prompt_tokens += piece.prompt_tokens
            completion_tokens += piece.completion_tokens
            yield {**chunk, "choices": [{"index": index, "text": "", "finish_reason": FINISH[piece.finish_reason],
                                         "logprobs": None}]}
    if usage:
        yield {"id": cid, "object": "text_completion", "created": now(), "model": model, "choices": [],
               "usage": Usage.of(prompt_tokens, completion_tokens).model_dump()}


# -- embeddings ----------------------------------------------------------------------------
@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    state = _state(request)
    model = state.find(body.model, "embedding")
    texts = body.texts()
    if any(not text for text in texts):
        raise errors.invalid("input", "input must not contain empty strings")
    if body.dimensions not in (None, state.embedder.dimensions):
        raise errors.invalid("dimensions", f"{model.id} gives {state.embedder.dimensions} dimensions only")
    vectors = await anyio.to_thread.run_sync(state.embedder.embed, texts)
    count = getattr(state.embedder, "count_tokens", None)
    tokens = await anyio.to_thread.run_sync(count, texts) if count else sum(len(t.split()) for t in texts)
    data = [{"object": "embedding", "index": i, "embedding": _encoded(vector, body.encoding_format)}
            for i, vector in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model.id, "usage": {"prompt_tokens": tokens,
                                                                          "total_tokens": tokens}}


def _encoded(vector: Any, encoding: str) -> Any:
    if encoding == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


# -- server-sent events --------------------------------------------------------------------
def _sse(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        except errors.APIError as exc:  # after the headers went out: the error is an event
            yield b"data: " + json.dumps(exc.body()).encode() + b"\n\n"
        except SyscallError as exc:
            yield b"data: " + json.dumps(errors.from_syscall(exc).body()).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
