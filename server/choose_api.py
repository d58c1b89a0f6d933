"""`POST /v1/choose`: the `choose` syscall over HTTP, an llmos extension beside the OpenAI
API (not a field smuggled into it). It runs as a process of its own, like a completion.

Request: {"model", "question", "options": [...], "descriptions"?: [...], "system"?}.
Reply: {"object": "choice", "model", "option", "index", "probabilities", "logprobs",
"similarities", "usage": {"prompt_tokens", "completion_tokens": 0, "total_tokens"}}.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from llmos.server.hangup import unless_hung_up
from llmos.server.openai_api import REQUEST_CAPS
from llmos.server.openai_schema import Usage

router = APIRouter()


class ChooseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an llmos endpoint: an unknown field is a mistake

    model: str = Field(min_length=1)
    question: str = Field(min_length=1)
    options: list[str] = Field(min_length=2)
    descriptions: list[str] | None = None
    system: str | None = None


@router.post("/v1/choose")
async def choose(body: ChooseRequest, request: Request) -> dict[str, Any]:
    state = request.app.state.openai
    model = state.find(body.model, "chat")
    fields = body.model_dump(exclude={"model"}, exclude_none=True)
    choice = await unless_hung_up(request, lambda: state.gateway.call(
        "llmos.choose", lambda sys: sys.choose(**fields), REQUEST_CAPS))
    return {"object": "choice", "model": model.id, "option": choice.option, "index": choice.index,
            "probabilities": list(choice.probabilities),
            "logprobs": None if choice.logprobs is None else list(choice.logprobs),
            "similarities": None if choice.similarities is None else list(choice.similarities),
            "usage": Usage.of(choice.prompt_tokens, 0).model_dump()}
