"""Counting messages in a model's own tokens, through the kernel's `ModelPort.tokenize`.

`tokenize` renders messages with the model's chat template, so the counts include the
template's framing. A message's count is what it adds to a prompt that
already holds a system message, which is exact for templates that frame each message on
its own (ChatML, Llama's, ...); the pager checks every prompt's exact total anyway.
Blocking: call these in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

from llmos.kernel.model import ChatMessage

_ANCHOR = ChatMessage(role="system", content="x")


class TokenCounter:
    """Counts in one model's tokens (`tokenize`: its chat template and tokenizer)."""

    def __init__(self, tokenize: Callable[[Sequence[ChatMessage]], list[int]]) -> None:
        self.tokenize = tokenize

    def prompt(self, messages: Sequence[ChatMessage]) -> int:
        """Exact tokens of a chat prompt, the generation prompt included."""
        return len(self.tokenize(messages))

    def message(self, message: ChatMessage) -> int:
        """What `message` adds to a prompt."""
        return self.prompt((_ANCHOR, message)) - self._anchored

    @cached_property
    def _anchored(self) -> int:
        return self.prompt((_ANCHOR,))

    @cached_property
    def base(self) -> int:
        """A prompt's fixed cost: the generation prompt (and any template preamble)."""
        return self._anchored - self.message(_ANCHOR)

    @cached_property
    def no_system_surcharge(self) -> int:
        """Extra tokens the template adds when a prompt does not start with a system
        message (SmolLM2's, for one, then puts in a default system prompt)."""
        probe = ChatMessage(role="user", content="x")
        return max(0, self.prompt((probe,)) - self.base - self.message(probe))
