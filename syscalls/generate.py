"""Generation syscalls: chat (a conversation the process keeps) and generate (raw completion).

Both return a `Reply`, or with `stream=True` a `TextStream` that yields text as the model
produces it and holds the `Reply` once it is exhausted.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmos.kernel import capabilities
from llmos.kernel.abi import Request
from llmos.kernel.errors import ModelError
from llmos.kernel.generation import GenerationService, Ticket
from llmos.kernel.kernel import Kernel
from llmos.kernel.model import ChatMessage, FinishReason, GenerationJob, SamplingParams
from llmos.kernel.process import Process
from llmos.syscalls import context, toolchat
from llmos.syscalls.toolchat import ToolCall


class Reply(BaseModel):
    """A finished generation."""

    model_config = ConfigDict(frozen=True)

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    model: str
    elapsed_s: float
    first_token_s: float | None  # time to first token, None if none came
    tool_calls: tuple[ToolCall, ...] = ()  # with `tools=`: the calls the model chose (then text is "")


class _Sampling(Request, SamplingParams):
    """Decoding settings shared by chat and generate (fields of SamplingParams), and `stream`."""

    stream: bool = False

    def sampling(self) -> SamplingParams:
        return SamplingParams(**{name: getattr(self, name) for name in SamplingParams.model_fields})


class Chat(_Sampling):
    """One turn of the process's conversation, or a stateless chat over explicit `messages`."""

    call: ClassVar[str] = "chat"
    capability: ClassVar[str | None] = capabilities.MODEL_GENERATE
    blocking: ClassVar[bool] = True

    message: str | None = None  # appended to the process's conversation, as is the reply
    messages: tuple[ChatMessage, ...] | None = None  # the whole conversation; the process's is untouched
    system: str | None = None  # a system prompt placed first
    tools: tuple[str, ...] | None = None  # tools the model may call instead of answering (not with stream)

    @model_validator(mode="after")
    def _one_source(self) -> Chat:
        if (self.message is None) == (self.messages is None):
            raise ValueError("give exactly one of 'message' or 'messages'")
        if self.tools is not None and (not self.tools or self.stream or self.json_schema is not None):
            raise ValueError("'tools' must name at least one tool, and goes with neither 'stream' nor 'json_schema'")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")
        return self


class Generate(_Sampling):
    """Continue `prompt` as plain text, with no chat template."""

    call: ClassVar[str] = "generate"
    capability: ClassVar[str | None] = capabilities.MODEL_GENERATE
    blocking: ClassVar[bool] = True

    prompt: str = Field(min_length=1)


class TextStream:
    """Text pieces as they are generated; `reply` is set once the stream is exhausted.
    Leaving it early (break, aclose) cancels the generation."""

    def __init__(self, ticket: Ticket, service: GenerationService, finish: Callable[[GenerationJob], Reply]) -> None:
        self._ticket, self._service, self._finish = ticket, service, finish
        self.reply: Reply | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        try:
            async for piece in self._ticket.pieces():
                yield piece
            self.reply = self._finish(await self._ticket.result())
        finally:
            self._service.cancel(self._ticket)

    async def text(self) -> str:
        """Drain the stream and return the whole text."""
        return "".join([piece async for piece in self])

    async def aclose(self) -> None:
        self._service.cancel(self._ticket)


def _service(kernel: Kernel) -> GenerationService:
    if kernel.generation is None:
        raise ModelError("this kernel has no model loaded; boot it with a model to use chat or generate")
    return kernel.generation


def _reply(service: GenerationService, ticket: Ticket, job: GenerationJob) -> Reply:
    first = None if ticket.first_token_at is None else ticket.first_token_at - ticket.started_at
    return Reply(text=job.text, finish_reason=job.finish_reason or "cancelled", prompt_tokens=len(job.prompt_ids),
                 completion_tokens=len(job.token_ids), model=service.driver.name,
                 elapsed_s=time.perf_counter() - ticket.started_at, first_token_s=first)


async def _serve(service: GenerationService, ticket: Ticket, stream: bool,
                 on_reply: Callable[[Reply], None] = lambda reply: None) -> Reply | TextStream:
    def finish(job: GenerationJob) -> Reply:
        reply = _reply(service, ticket, job)
        on_reply(reply)
        return reply

    if stream:
        return TextStream(ticket, service, finish)
    try:
        return finish(await ticket.result())
    finally:
        service.cancel(ticket)  # no-op once finished; frees the model if we were cancelled


async def sys_chat(kernel: Kernel, caller: Process, req: Chat) -> Reply | TextStream:
    service = _service(kernel)
    if req.tools is not None:
        call = await _choose_tool(kernel, service, caller, req)
        if call is not None:
            return call
    system = (ChatMessage(role="system", content=req.system),) if req.system else ()
    if req.messages is not None:
        ticket = await service.submit(caller, req.sampling(), messages=system + req.messages)
        return await _serve(service, ticket, req.stream)
    window = context.window(kernel, caller)
    message = req.message or ""
    prompt = await window.prompt(message, system=req.system)  # may page out, recall, or raise E2BIG
    ticket = await service.submit(caller, req.sampling(), messages=prompt)

    def remember(reply: Reply) -> None:  # the conversation grows only by completed turns
        if reply.finish_reason in ("stop", "length"):
            window.commit(message, reply.text)

    return await _serve(service, ticket, req.stream, remember)


async def _choose_tool(kernel: Kernel, service: GenerationService, caller: Process, req: Chat) -> Reply | None:
    """A reply holding the tool call the model chose, or None when it chose to answer."""
    specs = toolchat.offered_tools(kernel, caller, req.tools or ())
    message = req.message if req.message is not None else (req.messages or ())[-1].content
    choice = await _json_turn(service, caller, req, toolchat.choice_prompt(specs, message),
                              toolchat.choice_schema(specs))
    if choice.data["tool"] == toolchat.NO_TOOL:
        return None
    spec = next(spec for spec in specs if spec.name == choice.data["tool"])
    arguments = await _json_turn(service, caller, req, toolchat.arguments_prompt(spec, message),
                                 toolchat.arguments_schema(spec))
    call = ToolCall(name=spec.name, arguments=arguments.data)
    if req.message is not None:
        context.window(kernel, caller).commit(req.message, json.dumps({"tool": call.name, "arguments": call.arguments}))
    return arguments.reply.model_copy(update={
        "text": "", "tool_calls": (call,), "prompt_tokens": choice.reply.prompt_tokens + arguments.reply.prompt_tokens,
        "completion_tokens": choice.reply.completion_tokens + arguments.reply.completion_tokens,
        "elapsed_s": choice.reply.elapsed_s + arguments.reply.elapsed_s})


class _JsonTurn(NamedTuple):
    reply: Reply
    data: Any


async def _json_turn(service: GenerationService, caller: Process, req: Chat, prompt: str,
                     schema: dict) -> _JsonTurn:
    sampling = req.sampling().model_copy(update={"json_schema": schema})
    ticket = await service.submit(caller, sampling, messages=(ChatMessage(role="user", content=prompt),))
    reply = await _serve(service, ticket, stream=False)
    return _JsonTurn(reply=reply, data=toolchat.parse_json(reply.text))


async def sys_generate(kernel: Kernel, caller: Process, req: Generate) -> Reply | TextStream:
    service = _service(kernel)
    ticket = await service.submit(caller, req.sampling(), prompt=req.prompt)
    return await _serve(service, ticket, req.stream)


HANDLERS = {Chat: sys_chat, Generate: sys_generate}
