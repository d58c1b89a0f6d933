"""The OpenAI API's request and response shapes, as far as llmos serves them.

Requests validate what llmos reads and ignore fields it does not know (as vLLM does, so
that frameworks which send extra fields work unchanged); a known field with a value llmos
cannot honour is a 400 naming it, never silently dropped.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


MAX_INPUTS = 2048  # prompts of one completion request, texts of one embeddings request (OpenAI's limit)


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Unsupported(ValueError):
    """A request field whose value llmos cannot honour; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


# -- chat requests -----------------------------------------------------------------------
class FunctionCall(_Loose):
    name: str
    arguments: str = "{}"  # JSON text, as OpenAI sends it


class ToolCallIn(_Loose):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_Loose):
    type: str
    text: str | None = None


class Message(_Loose):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text: its content, its text parts joined; an image part is refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text":
                raise Unsupported("messages", f"content parts of type {part.type!r} are not supported "
                                  "(this model reads text only)")
        return "".join(part.text or "" for part in self.content)


class FunctionDef(_Loose):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolDef(_Loose):
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(_Loose):
    type: Literal["function"]
    function: dict[str, str]

    @property
    def name(self) -> str:
        name = self.function.get("name")
        if not name:
            raise Unsupported("tool_choice", "a named tool_choice needs function.name")
        return name


class JsonSchemaFormat(_Loose):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Loose):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def schema_or_none(self) -> dict[str, Any] | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "object"}
        if self.json_schema is None:
            raise Unsupported("response_format", "response_format of type json_schema needs a json_schema")
        return self.json_schema.schema_ or {"type": "object"}


class StreamOptions(_Loose):
    include_usage: bool = False


class _Sampling(_Loose):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 16:
            raise ValueError("at most 16 stop sequences")
        return stop

    def check_supported(self) -> None:
        """Refuse, naming the field, what llmos cannot honour (rather than ignore it)."""
        if self.n != 1:
            raise Unsupported("n", "n must be 1: send the requests separately (llmos batches them together)")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise Unsupported(name, f"{name} is not supported; leave it 0")
        if self.logit_bias:
            raise Unsupported("logit_bias", "logit_bias is not supported")
        if self.logprobs:
            raise Unsupported("logprobs", "logprobs are not supported")

    def sampling(self, default_max_tokens: int) -> dict[str, Any]:
        """The fields of llmos's SamplingParams this request sets."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        fields: dict[str, Any] = {"max_tokens": self.max_tokens or default_max_tokens, "stop": tuple(stops)}
        if self.temperature is not None:  # else llmos's default, greedy (a small model rambles at 1.0)
            fields["temperature"] = self.temperature
        if self.top_p is not None:
            fields["top_p"] = self.top_p
        if self.seed is not None:
            fields["seed"] = self.seed
        return fields

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _completion_tokens(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:  # the newer name wins, as in OpenAI's API
            self.max_tokens = self.max_completion_tokens
        return self

    def tool_choice_name(self) -> str:
        """"auto", "required", "none", or the name of the function to call."""
        if self.tool_choice is None:
            return "auto"
        if self.tool_choice == "required" and not self.tools:
            raise Unsupported("tool_choice", "tool_choice 'required' needs at least one tool in 'tools'")
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.name
            if name not in {tool.function.name for tool in self.tools or ()}:
                raise Unsupported("tool_choice", f"tool_choice names {name!r}, which is not among the tools")
            return name
        return self.tool_choice


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts or not all(prompts):
            raise Unsupported("prompt", "prompt must be a non-empty string or a list of them")
        if len(prompts) > MAX_INPUTS:
            raise Unsupported("prompt", f"at most {MAX_INPUTS} prompts in one request")
        return prompts

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise Unsupported("echo", "echo is not supported")
        if self.suffix:
            raise Unsupported("suffix", "suffix (fill-in-the-middle) is not supported")
        if self.best_of not in (None, 1):
            raise Unsupported("best_of", "best_of must be 1")


class EmbeddingRequest(_Loose):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(description="text(s); token arrays are not taken (LangChain: "
                                   "OpenAIEmbeddings(check_embedding_ctx_length=False))")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts:
            raise Unsupported("input", "input must not be empty")
        if len(texts) > MAX_INPUTS:
            raise Unsupported("input", f"at most {MAX_INPUTS} inputs in one request")
        return texts


# -- responses ----------------------------------------------------------------------------
def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


def tool_calls_out(calls: Any) -> list[dict[str, Any]]:
    """llmos's ToolCalls in OpenAI's form, each with an id the client echoes back."""
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments)}} for call in calls]


FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "error": "stop"}
