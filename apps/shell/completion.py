"""Tab completion: commands, then app names, pids and %jobs, or model names, by position."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

TAKES_PID = {"kill", "suspend", "resume", "nice", "wait", "trace", "fg"}


class ShellCompleter(Completer):
    def __init__(self, commands: Callable[[], Iterable[str]], apps: Callable[[], Iterable[str]],
                 pids: Callable[[], Iterable[str]], models: Callable[[], Iterable[str]]) -> None:
        self.commands, self.apps, self.pids, self.models = commands, apps, pids, models

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        words = document.text_before_cursor.split()
        if document.text_before_cursor.endswith(" ") or not words:
            words.append("")
        word = words[-1]
        for option in sorted(set(self.candidates(words[:-1]))):
            if option.startswith(word):
                yield Completion(option, start_position=-len(word))

    def candidates(self, before: list[str]) -> Iterable[str]:
        if not before:
            return self.commands()
        command = before[0]
        if command == "run" and len(before) == 1:
            return self.apps()
        if command in TAKES_PID and len(before) == 1:
            return self.pids()
        if command == "chat" and before[-1] == "--model" or command == "models":
            return self.models()
        if command == "help" and len(before) == 1:
            return self.commands()
        return ()
