"""Tab completion by position: commands, app names, pids and jobs, model names."""

from __future__ import annotations

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from llmos.apps.shell.completion import ShellCompleter

COMPLETER = ShellCompleter(lambda: ["run", "ps", "kill", "chat", "help"], lambda: ["translate", "summarize"],
                           lambda: ["12", "%1"], lambda: ["smollm2"])


def complete(text: str) -> list[str]:
    return [c.text for c in COMPLETER.get_completions(Document(text), CompleteEvent())]


def test_completion_by_position():
    assert complete("") == ["chat", "help", "kill", "ps", "run"]
    assert complete("r") == ["run"]
    assert complete("run ") == ["summarize", "translate"]
    assert complete("run tr") == ["translate"]
    assert complete("kill ") == ["%1", "12"]
    assert complete("chat --model ") == ["smollm2"]
    assert complete("run translate x") == []
