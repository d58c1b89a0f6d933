"""Messages between processes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, JsonValue


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    sender: int  # pid; 0 is the kernel
    sender_name: str
    payload: JsonValue
    sent_at: float
