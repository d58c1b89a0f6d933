"""How the kernel asks the model to decide: a choice among options (the `choose` syscall),
which tool answers a message (`chat(tools=...)`), and that tool's arguments.

The syscall handlers run the model; a `DecisionPolicy` (plugged in by the composition root,
see llmos.drivers.decisions) says what to ask it. `ModelAccess` is what a policy may use:
the model's two ways of deciding, on behalf of the process that asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from llmos.kernel.model import ChatMessage
from llmos.kernel.tools import JsonSchema, ToolSpec


class JsonTurn(NamedTuple):
    """One constrained generation: a user message, and the JSON schema the reply follows."""

    prompt: str
    schema: JsonSchema


class ModelAccess(Protocol):
    """The model, as a decision policy may use it for the process that asked."""

    async def json(self, turn: JsonTurn) -> Any:
        """The model's reply to the turn, parsed (it follows the schema)."""

    async def choose(self, question: str, options: Sequence[str], descriptions: Sequence[str] | None = None,
                     system: str | None = None, examples: Sequence[Sequence[str]] | None = None) -> int:
        """The index of the option that fits best (see `choose`; `examples`: per option, requests it fits)."""


class DecisionPolicy(Protocol):
    def choice_messages(self, question: str, options: Sequence[str], descriptions: Sequence[str] | None,
                        system: str | None) -> tuple[ChatMessage, ...]:
        """The chat a `choose` question becomes; each option is scored as the reply to it."""

    async def pick_tool(self, specs: Sequence[ToolSpec], message: str, model: ModelAccess, *,
                        required: bool = False) -> ToolSpec | None:
        """The tool that answers `message`, or None for no tool (never None when `required`;
        InvalidRequest for a spec it cannot offer)."""

    def tool_arguments(self, spec: ToolSpec, message: str) -> JsonTurn:
        """The turn that fills the chosen tool's arguments (its reply is the arguments)."""

    def json_reply(self, schema: JsonSchema) -> tuple[str, JsonSchema]:
        """How a chat reply that must follow `schema` (`json_schema=`) is asked for: a system
        line telling the model the reply's shape, and the schema it is decoded under."""
