"""Generation syscalls: chat (a conversation the process keeps) and generate (raw completion).

Both return a `Reply`, or with `stream=True` a `TextStream` that yields text as the model
produces it and holds the `Reply` once it is exhausted.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmos.kernel import capabilities, generation
from llmos.kernel.abi import Request
from llmos.kernel.capabilities import Need
from llmos.kernel.decisions import JsonTurn
from llmos.kernel.errors import InvalidRequest, NoSuchTool, ToolUnavailable
from llmos.kernel.generation import GenerationService
from llmos.kernel.kernel import Kernel
from llmos.kernel.model import ChatMessage, FinishReason, GenerationJob, SamplingParams
from llmos.kernel.process import Process
from llmos.kernel.tools import ToolSpec
from llmos.syscalls import choose, context
from llmos.syscalls.tools import tool_capability


class ToolCall(BaseModel):
    """A call the model asked for; run it with `sys.call_tool(call.name, **call.arguments)`."""

    model_config = ConfigDict(frozen=True)

    name: str
    arguments: dict[str, Any]


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


class TextStream:
    """Text pieces as they are generated; `reply` is set once the stream is exhausted.
    Leaving it early (break, aclose) cancels the generation."""

    def __init__(self, job: GenerationJob, service: GenerationService, finish: Callable[[GenerationJob], Reply]) -> None:
        self._job, self._service, self._finish = job, service, finish
        self.reply: Reply | None = None

    @property
    def job(self) -> GenerationJob:
        """The generation behind the stream (observers wait on it: `generation.result`)."""
        return self._job

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        try:
            async for piece in generation.pieces(self._job):
                yield piece
            self.reply = self._finish(await generation.result(self._job))
        finally:
            self._service.cancel(self._job)

    async def text(self) -> str:
        """Drain the stream and return the whole text."""
        return "".join([piece async for piece in self])

    async def aclose(self) -> None:
        self._service.cancel(self._job)


class _Sampling(SamplingParams):
    """Decoding settings shared by chat and generate (fields of SamplingParams), and `stream`."""

    stream: bool = False

    def streams(self) -> bool:
        return self.stream

    def sampling(self) -> SamplingParams:
        return SamplingParams(**{name: getattr(self, name) for name in SamplingParams.model_fields})


class Chat(_Sampling, Request[Reply | TextStream]):
    """Say `message` in this process's conversation and get the model's reply (which joins
    the conversation), or chat statelessly over explicit `messages`.
    Sampling options: max_tokens, temperature (0 = greedy), top_p, seed, stop.
    `json_schema=`: the reply is JSON following it. `tools=[names]`: the model may call
    one of those tools instead of answering; the calls are in `reply.tool_calls`.
    `functions=[ToolSpec...]`: the same for functions the caller defines and runs itself
    (OpenAI's `tools`; nothing runs in the kernel, so they need no capability).
    `tool_choice`: "auto" (the model decides), "required" (it must call one), "none", or
    the name of the one to call. With `messages` ending in a tool's result, "auto" answers.
    `stream=True`: a `TextStream` of the text as it comes (a `Reply` when a tool is called)."""

    call: ClassVar[str] = "chat"
    capability: ClassVar[str | None] = capabilities.MODEL_GENERATE
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("message",)

    message: str | None = None  # appended to the process's conversation, as is the reply
    messages: tuple[ChatMessage, ...] | None = None  # the whole conversation; the process's is untouched
    system: str | None = None  # a system prompt placed first
    tools: tuple[str, ...] | None = None  # kernel tools the model may call instead of answering
    functions: tuple[ToolSpec, ...] | None = None  # functions the caller runs itself, offered likewise
    tool_choice: str = Field(default="auto", min_length=1)  # "auto", "required", "none" or a name

    @model_validator(mode="after")
    def _one_source(self) -> Chat:
        if (self.message is None) == (self.messages is None):
            raise ValueError("give exactly one of 'message' or 'messages'")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")
        offered = self.offered_names()
        if offered is not None and (not offered or self.json_schema is not None):
            raise ValueError("'tools' / 'functions' must offer at least one, and do not go with 'json_schema'")
        if self.tools is not None and self.functions is not None:
            raise ValueError("offer either kernel 'tools' or caller 'functions', not both")
        if self.tool_choice not in ("auto", "required", "none") and self.tool_choice not in (offered or ()):
            raise ValueError(f"'tool_choice' {self.tool_choice!r} is none of auto, required, none or an offered name")
        return self

    def offered_names(self) -> tuple[str, ...] | None:
        """The names of what the model may call, or None when nothing is offered."""
        if self.functions is not None:
            return tuple(spec.name for spec in self.functions)
        return self.tools

    def needs(self, caller: Process) -> Iterator[Need]:
        for name in dict.fromkeys(self.tools or ()):  # offering a tool to the model needs its capability
            yield tool_capability(name)


class Generate(_Sampling, Request[Reply | TextStream]):
    """Continue `prompt` as plain text, with no chat template."""

    call: ClassVar[str] = "generate"
    capability: ClassVar[str | None] = capabilities.MODEL_GENERATE
    blocking: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("prompt",)

    prompt: str = Field(min_length=1)


def _reply(service: GenerationService, job: GenerationJob) -> Reply:
    first = None if job.first_token_at is None else job.first_token_at - job.submitted_at
    return Reply(text=job.text, finish_reason=job.finish_reason or "cancelled", prompt_tokens=len(job.prompt_ids),
                 completion_tokens=len(job.token_ids), model=service.driver.name,
                 elapsed_s=time.perf_counter() - job.submitted_at, first_token_s=first)


async def _serve(service: GenerationService, job: GenerationJob, stream: bool,
                 on_reply: Callable[[Reply], None] = lambda reply: None) -> Reply | TextStream:
    def finish(done: GenerationJob) -> Reply:
        reply = _reply(service, done)
        on_reply(reply)
        return reply

    if stream:
        return TextStream(job, service, finish)
    try:
        return finish(await generation.result(job))
    finally:
        service.cancel(job)  # no-op once finished; frees the model if we were cancelled


async def sys_chat(kernel: Kernel, caller: Process, req: Chat) -> Reply | TextStream:
    service = await choose.service(kernel, caller)
    if req.offered_names() is not None and req.tool_choice != "none":
        call = await _choose_tool(kernel, service, caller, req)
        if call is not None:
            return call
    system, sampling = req.system, req.sampling()
    if req.json_schema is not None and kernel.decisions is not None:  # the model is told the reply's shape
        shape, schema = kernel.decisions.json_reply(req.json_schema)
        system, sampling = "\n\n".join(filter(None, (system, shape))), sampling.model_copy(update={"json_schema": schema})
    if req.messages is not None:
        job = await service.submit(caller, sampling, messages=_with_system(system, req.messages))
        return await _serve(service, job, req.stream)
    window = context.window(kernel, caller)
    message = req.message or ""
    prompt = await window.prompt(message, system=system)  # may page out, recall, or raise E2BIG
    job = await service.submit(caller, sampling, messages=prompt.messages, prompt_ids=prompt.token_ids)

    def remember(reply: Reply) -> None:  # the conversation grows only by completed turns
        if reply.finish_reason in ("stop", "length"):
            window.commit(message, reply.text)

    return await _serve(service, job, req.stream, remember)


def _with_system(system: str | None, messages: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
    """`messages` with `system` in their system message: after its own text where they start
    with one (a chat template may take only one), else a message of its own, first."""
    if not system:
        return messages
    if messages[0].role == "system":
        return (messages[0].model_copy(update={"content": f"{messages[0].content}\n\n{system}"}), *messages[1:])
    return (ChatMessage(role="system", content=system), *messages)


def _offered(kernel: Kernel, req: Chat) -> list[ToolSpec]:
    """The specs of what the model may call: the caller's functions, or the kernel tools
    named (the caller's right to each is checked by `Chat.needs`)."""
    if req.functions is not None:
        return list({spec.name: spec for spec in req.functions}.values())
    names = req.tools or ()
    if kernel.tools is None:
        raise ToolUnavailable("this kernel has no tools to offer the model")
    specs = []
    for name in dict.fromkeys(names):
        spec = kernel.tools.get(name)
        if spec is None:
            raise NoSuchTool(f"no tool named {name!r} to offer the model")
        specs.append(spec)
    return specs


async def _choose_tool(kernel: Kernel, service: GenerationService, caller: Process, req: Chat) -> Reply | None:
    """A reply holding the tool call the model chose, or None when it chose to answer.
    What the model is asked is the kernel's decision policy's (kernel.decisions)."""
    specs, decisions = _offered(kernel, req), choose.policy(kernel)
    last = ChatMessage(role="user", content=req.message) if req.message is not None else (req.messages or ())[-1]
    if req.tool_choice == "auto" and last.role == "tool":
        return None  # a tool's result came back: the model answers with it
    model = _OnBehalf(kernel, service, caller, req)
    message = last.content
    if req.tool_choice in ("auto", "required"):
        spec = await decisions.pick_tool(specs, message, model, required=req.tool_choice == "required")
    else:
        spec = next(spec for spec in specs if spec.name == req.tool_choice)
    if spec is None:
        return None
    arguments = await model.json(decisions.tool_arguments(spec, message))
    call = ToolCall(name=spec.name, arguments=arguments)
    if req.message is not None:
        context.window(kernel, caller).commit(req.message, json.dumps({"tool": call.name, "arguments": call.arguments}))
    assert model.last is not None  # the arguments' turn
    return model.last.model_copy(update={"text": "", "tool_calls": (call,), **model.costs})


class _OnBehalf:
    """`llmos.kernel.decisions.ModelAccess` for the caller's decision: every turn is its
    own generation, and what they cost adds up in its reply."""

    def __init__(self, kernel: Kernel, service: GenerationService, caller: Process, req: Chat) -> None:
        self.kernel, self.service, self.caller, self.req = kernel, service, caller, req
        self.costs = {"prompt_tokens": 0, "completion_tokens": 0, "elapsed_s": 0.0}
        self.last: Reply | None = None

    async def json(self, turn: JsonTurn) -> Any:
        sampling = self.req.sampling().model_copy(update={"json_schema": turn.schema, "stop": ()})
        job = await self.service.submit(self.caller, sampling, messages=(ChatMessage(role="user", content=turn.prompt),))
        reply = await _serve(self.service, job, stream=False)
        assert isinstance(reply, Reply)
        self._add(reply.prompt_tokens, reply.completion_tokens, reply.elapsed_s)
        self.last = reply
        try:
            return json.loads(reply.text)
        except json.JSONDecodeError:  # a constrained reply: only max_tokens can leave it unfinished
            raise InvalidRequest("the model's tool turn was cut short by max_tokens; raise max_tokens") from None

    async def choose(self, question: str, options: Sequence[str], descriptions: Sequence[str] | None = None,
                     system: str | None = None, examples: Sequence[Sequence[str]] | None = None) -> int:
        picked = await choose.decide(self.kernel, self.caller, question, options, descriptions, system, examples)
        self._add(picked.prompt_tokens, 0, picked.elapsed_s)
        return picked.index

    def _add(self, prompt_tokens: int, completion_tokens: int, elapsed_s: float) -> None:
        self.costs["prompt_tokens"] += prompt_tokens
        self.costs["completion_tokens"] += completion_tokens
        self.costs["elapsed_s"] += elapsed_s


async def sys_generate(kernel: Kernel, caller: Process, req: Generate) -> Reply | TextStream:
    service = await choose.service(kernel, caller)
    job = await service.submit(caller, req.sampling(), prompt=req.prompt)
    return await _serve(service, job, req.stream)


HANDLERS = {Chat: sys_chat, Generate: sys_generate}
