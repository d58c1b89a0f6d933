"""What `llmos eval` reads, and how its answers are scored: no model here.

Three inputs, each checked as it is read (a bad line is a ConfigError naming the file and
the line; a file with no items is one too):
  - a text file, cut into windows for perplexity;
  - a JSONL of {"question": ..., "answer": ...} (or "answers": [...]) for question answering;
  - a JSONL of {"prompt": ..., "tool": <a tool's name or "none">} for tool choice, the
    format of bench/evals/tool_choice.jsonl.
QA replies are scored as SQuAD scores them: both sides normalised (lowercase, no
punctuation, no articles, single spaces), then exact match, or the answer's words appearing
in the reply's as a run of whole words.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmos.kernel.errors import ConfigError

NO_TOOL = "none"  # the label meaning "answer without a tool" (llmos.drivers.decisions.NO_TOOL)
# A perplexity window's size in characters: about 400-500 tokens of English for a
# byte-level BPE (~4 characters a token), under the ~512 tokens a window should hold.
WINDOW_CHARS = 1800

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WORDS = re.compile(r"\S+\s*")


# -- rows -----------------------------------------------------------------------------------------------
class Row(BaseModel):
    """One line of a JSONL input; `line` is its line number, set by the reader. Other keys
    (an id, a source) are allowed and ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    line: int = 0


class QAItem(Row):
    question: str = Field(min_length=1)
    answers: tuple[str, ...] = Field(min_length=1)  # any of them is right

    @model_validator(mode="before")
    @classmethod
    def _one_answer_or_many(cls, data: Any) -> Any:
        if isinstance(data, dict) and "answer" in data:
            if "answers" in data:
                raise ValueError("give 'answer' or 'answers', not both")
            data = {**data, "answers": [data["answer"]] if isinstance(data["answer"], str) else data["answer"]}
        return data

    @field_validator("answers")
    @classmethod
    def _answers_have_words(cls, answers: tuple[str, ...]) -> tuple[str, ...]:
        for answer in answers:
            if not normalize(answer):
                raise ValueError(f"the answer {answer!r} is empty once normalised (no words but articles "
                                 "and punctuation)")
        return answers


class ToolPrompt(Row):
    prompt: str = Field(min_length=1)
    tool: str = Field(min_length=1)  # the tool that should be called, or "none"


class Window(BaseModel):
    """A piece of the perplexity text: `context` (its first word, which is not scored) and
    `continuation` (the rest, each of whose tokens is)."""

    model_config = ConfigDict(frozen=True)

    context: str
    continuation: str


RowT = TypeVar("RowT", bound=Row)


# -- reading ----------------------------------------------------------------------------------------------
def read_text(path: Path) -> str:
    """The file's text; a missing, unreadable or non-UTF-8 file is a ConfigError."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def read_jsonl(path: Path, row: type[RowT], limit: int | None = None) -> list[RowT]:
    """Each non-blank line of `path` as a `row` (the first `limit` of them)."""
    rows: list[RowT] = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        rows.append(_row(path, number, line, row))
    if not rows:
        raise ConfigError(f"{path}: no items (one JSON object a line: {_shape(row)})")
    return rows[:limit]


def _row(path: Path, number: int, line: str, row: type[RowT]) -> RowT:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{number}: not JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:{number}: expected a JSON object {_shape(row)}")
    try:
        return row.model_validate({**data, "line": number})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}:{number}: {where + ': ' if where else ''}{first['msg']} "
                          f"(expected {_shape(row)})") from None


def _shape(row: type[Row]) -> str:
    return {QAItem: '{"question": ..., "answer": ...}',
            ToolPrompt: '{"prompt": ..., "tool": <a tool\'s name or "none">}'}.get(row, row.__name__)


def read_qa(path: Path, limit: int | None = None) -> list[QAItem]:
    return read_jsonl(path, QAItem, limit)


def read_tool_prompts(path: Path, tools: Iterable[str], limit: int | None = None) -> list[ToolPrompt]:
    """The tool prompts of `path`, each labelled with one of `tools` or "none"."""
    known = {*tools, NO_TOOL}
    items = read_jsonl(path, ToolPrompt, limit)
    for item in items:
        if item.tool not in known:
            raise ConfigError(f"{path}:{item.line}: tool {item.tool!r} is not one of {', '.join(sorted(known))}")
    return items


def read_windows(path: Path, limit: int | None = None, size: int = WINDOW_CHARS) -> list[Window]:
    """The text of `path` in windows of at most `size` characters, cut between words (the
    first `limit` windows)."""
    windows = text_windows(read_text(path), size)
    if not windows:
        raise ConfigError(f"{path}: no text to score (it needs at least two words)")
    return windows[:limit]


def text_windows(text: str, size: int = WINDOW_CHARS) -> list[Window]:
    """`text` cut between words into pieces of at most `size` characters (a longer word is a
    piece alone), without overlap; a piece of one word has nothing to score and is left out."""
    pieces: list[str] = []
    current = ""
    for word in _WORDS.findall(text.lstrip()):
        if current and len(current) + len(word) > size:
            pieces.append(current)
            current = ""
        current += word
    pieces.append(current)
    windows = []
    for piece in pieces:
        context = piece.split(maxsplit=1)[0] if piece.strip() else ""
        continuation = piece[len(context):]
        if context and continuation.strip():
            windows.append(Window(context=context, continuation=continuation))
    return windows


# -- scoring ---------------------------------------------------------------------------------------------
def normalize(text: str) -> str:
    """SQuAD's normalisation: lowercase, punctuation removed, articles removed, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(reply: str, answers: Iterable[str]) -> bool:
    return any(normalize(reply) == normalize(answer) for answer in answers)


def contains_answer(reply: str, answers: Iterable[str]) -> bool:
    """An answer's words appear in the reply's, in order, as whole words ("4" is not in "14")."""
    said = f" {normalize(reply)} "
    return any(f" {normalize(answer)} " in said for answer in answers)


def share(hits: Iterable[bool]) -> float | None:
    """The fraction of true values, None when there are none at all."""
    values = list(hits)
    return sum(values) / len(values) if values else None
