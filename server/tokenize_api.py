"""`POST /tokenize`: a prompt's token ids in the served model's own tokenizer, shaped like
vLLM's endpoint, so that a kernel elsewhere using this server's model (llmos.drivers.remote)
counts its context windows exactly.

Request: {"model", "messages": [...]} (the chat template and generation prompt applied) or
{"model", "prompt": "..."} (raw text, no special tokens, as `generate` counts it).
Reply: {"tokens": [...], "count": n, "max_model_len": n}.

Counting runs no model and changes nothing, so it is not a syscall: it calls the kernel's
driver directly (`tokenize` in a worker thread, as the kernel does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from llmos.server import errors
from llmos.server.openai_api import chat_message
from llmos.server.openai_schema import Message

router = APIRouter()


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # as the OpenAI requests: vLLM's other fields pass

    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    add_generation_prompt: bool = True


def _text_tokenizer(driver: Any) -> Callable[[str], list[int]]:
    """How the driver counts a raw prompt: its `tokenize_text`, else its Hugging Face
    tokenizer as `prepare` uses it for `generate`."""
    if callable(getattr(driver, "tokenize_text", None)):
        return driver.tokenize_text
    encode = getattr(getattr(driver, "tokenizer", None), "encode", None)
    if callable(encode):
        return lambda text: list(encode(text, add_special_tokens=False))
    raise errors.invalid("prompt", f"{driver.name} counts chats only here: send 'messages'")


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    model = request.app.state.openai.find(body.model, "chat")
    driver = request.app.state.kernel.driver
    if (body.prompt is None) == (body.messages is None):
        raise errors.invalid("messages", "give exactly one of 'prompt' or 'messages'")
    if body.prompt is not None:
        tokens = await anyio.to_thread.run_sync(_text_tokenizer(driver), body.prompt)
    else:
        if not body.add_generation_prompt:
            raise errors.invalid("add_generation_prompt", "chats are counted with the generation prompt only")
        messages = [chat_message(m) for m in body.messages or ()]
        tokens = await anyio.to_thread.run_sync(driver.tokenize, messages)
    return {"tokens": tokens, "count": len(tokens), "max_model_len": model.context_length}
