"""The shell's one error: a command could not be done."""

from __future__ import annotations


class ShellError(Exception):
    """A command could not be done; its message is the one line the user sees."""
