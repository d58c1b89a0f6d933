"""Messages between processes: to one pid or name, or published to a named topic."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, JsonValue


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    sender: int  # pid; 0 is the kernel
    sender_name: str
    payload: JsonValue
    sent_at: float
    topic: str | None = None  # set when the message was published to a topic, not sent to a pid
    # The sender had read untrusted text (kernel/security.py): so has whoever reads this.
    untrusted: bool = False
