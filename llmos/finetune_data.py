"""What `llmos finetune` trains on: a JSONL file read, checked and turned into token ids and
labels. The tokenizer is all it needs (no model), so a bad file is reported before any loads.

Each line is one example:
  - {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}: a chat,
    rendered with the tokenizer's chat template; the loss counts the assistant turns only
    (every other token's label is IGNORE);
  - {"text": "..."}: plain text, the loss on every token (and on the end-of-text token after it).
Every bad line is reported, with its number, in one FinetuneDataError: not JSON, not one of
those shapes, a chat with no assistant turn, more than `max_length` tokens.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmos.eval_data import read_text
from llmos.kernel.errors import ConfigError

IGNORE = -100  # the label cross-entropy skips (PyTorch's ignore_index): tokens the loss does not count
SHOWN_PROBLEMS = 20  # bad lines listed in the message; the error keeps them all
SHAPES = '{"messages": [{"role": ..., "content": ...}, ...]} or {"text": ...}'


# -- the lines -----------------------------------------------------------------------------------------
class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class ChatExample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: tuple[Turn, ...] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _has_an_assistant_turn(cls, messages: tuple[Turn, ...]) -> tuple[Turn, ...]:
        if not any(turn.role == "assistant" for turn in messages):
            raise ValueError("no assistant turn: nothing to learn from (the loss counts assistant turns only)")
        return messages


class TextExample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1)


Example = ChatExample | TextExample


@dataclass(frozen=True)
class Encoded:
    """One example as the model trains on it: `labels[i]` is `input_ids[i]` where the loss
    counts that token, IGNORE where it does not."""

    line: int
    input_ids: list[int]
    labels: list[int]

    def features(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "attention_mask": [1] * len(self.input_ids), "labels": self.labels}


class FinetuneDataError(ConfigError):
    """Lines of a fine-tuning data file that cannot be trained on: `problems` holds every one
    as (line number, what is wrong); the message lists the first SHOWN_PROBLEMS."""

    def __init__(self, path: Path, problems: Sequence[tuple[int, str]]) -> None:
        self.path = path
        self.problems = sorted(problems)
        lines = [f"{path}:{number}: {what}" for number, what in self.problems[:SHOWN_PROBLEMS]]
        if len(self.problems) > SHOWN_PROBLEMS:
            lines.append(f"... and {len(self.problems) - SHOWN_PROBLEMS} more")
        count = f"{len(self.problems)} bad line{'s' if len(self.problems) != 1 else ''}"
        super().__init__(f"{path}: {count} (each line: {SHAPES})\n" + "\n".join(lines))


# -- reading -----------------------------------------------------------------------------------------------
def read_examples(path: Path) -> tuple[list[tuple[int, Example]], list[tuple[int, str]]]:
    """The well-formed lines of `path` (line number, example) and the problems of the others.
    Blank lines are skipped; a missing or non-UTF-8 file is a ConfigError."""
    examples: list[tuple[int, Example]] = []
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            examples.append((number, parse_line(line)))
        except ValueError as exc:  # what parse_line raises: the line's problem, as a sentence
            problems.append((number, str(exc)))
    return examples, problems


def parse_line(line: str) -> Example:
    """One line as an example; ValueError saying what is wrong with it."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg}, column {exc.colno})") from None
    shape = _shape_of(data)
    try:
        return shape.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{where + ': ' if where else ''}{first['msg']}") from None


def _shape_of(data: Any) -> type[ChatExample] | type[TextExample]:
    # Chosen by key, so that the error is about the shape the line meant, not a union's.
    if isinstance(data, dict) and "messages" in data:
        return ChatExample
    if isinstance(data, dict) and "text" in data:
        return TextExample
    raise ValueError(f"expected {SHAPES}")


# -- encoding -----------------------------------------------------------------------------------------------
def load_examples(path: Path, tokenizer: Any, max_length: int) -> list[Encoded]:
    """Every example of `path` encoded for training; FinetuneDataError listing every bad line
    (malformed, or longer than `max_length` tokens), ConfigError for a file with no examples."""
    examples, problems = read_examples(path)
    encoded: list[Encoded] = []
    for number, example in examples:
        try:
            item = encode(example, tokenizer, number)
        except ValueError as exc:
            problems.append((number, str(exc)))
            continue
        if len(item.input_ids) > max_length:
            problems.append((number, f"{len(item.input_ids)} tokens, more than --max-length {max_length}"))
        else:
            encoded.append(item)
    if problems:
        raise FinetuneDataError(path, problems)
    if not encoded:
        raise ConfigError(f"{path}: no examples (one JSON object a line: {SHAPES})")
    return encoded


def encode(example: Example, tokenizer: Any, line: int = 0) -> Encoded:
    if isinstance(example, TextExample):
        return encode_text(example.text, tokenizer, line)
    return encode_chat([turn.model_dump() for turn in example.messages], tokenizer, line)


def encode_text(text: str, tokenizer: Any, line: int = 0) -> Encoded:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]  # so that the model learns where such a text ends
    return Encoded(line, ids, list(ids))


def encode_chat(messages: list[dict[str, str]], tokenizer: Any, line: int = 0) -> Encoded:
    """The chat as the template renders it, labelled on its assistant turns: each turn's span
    runs from the end of the conversation before it with the generation prompt ("...
    <|im_start|>assistant\\n") to the end of the conversation through it (its text and the
    template's end-of-turn), so the model learns the reply and where it stops."""
    text = render(tokenizer, messages)
    spans = [assistant_span(tokenizer, messages, i, text) for i, turn in enumerate(messages)
             if turn["role"] == "assistant"]
    tokens = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(tokens["input_ids"])
    labels = [token if _inside(offsets, spans) else IGNORE for token, offsets in zip(ids, tokens["offset_mapping"])]
    return Encoded(line, ids, labels)


def render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    """The chat as the tokenizer's template writes it; ValueError if the template refuses it
    (some templates raise on roles that do not alternate)."""
    from jinja2 import TemplateError  # transformers' templates are jinja; loaded with the tokenizer

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as exc:
        raise ValueError(f"the model's chat template refuses this conversation: {exc}") from None


def assistant_span(tokenizer: Any, messages: list[dict[str, str]], index: int, text: str) -> tuple[int, int]:
    """Where, in `text` (the whole chat rendered), assistant turn `index` is: by rendering the
    conversation up to it; ValueError if the template does not render a conversation as a
    prefix of its continuation (then no span can be trusted)."""
    before = render(tokenizer, messages[:index], generation_prompt=True)
    through = render(tokenizer, messages[:index + 1])
    if not (text.startswith(through) and through.startswith(before)):
        raise ValueError("the model's chat template renders this conversation differently as it grows, so its "
                         "assistant turns cannot be told apart; give it as {\"text\": ...}")
    return len(before), len(through)


def _inside(offsets: Iterable[int], spans: list[tuple[int, int]]) -> bool:
    start, end = offsets
    return any(first <= start and end <= last for first, last in spans)


# -- splitting -----------------------------------------------------------------------------------------------
def split(examples: Sequence[Encoded], val_fraction: float, seed: int) -> tuple[list[Encoded], list[Encoded]]:
    """(training, validation): a seeded shuffle, `val_fraction` of it held out, at least one
    example when there are two or more (and never all of them); none when the fraction is 0."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    held = 0
    if val_fraction > 0 and len(order) >= 2:
        held = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    return order[held:], order[:held]
