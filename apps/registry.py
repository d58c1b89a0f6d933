"""The apps `llmos run NAME` and the shell know by name: one table and one function to add to it.

A registered app is anything the kernel can run (an `async def main(sys, *args)`, a class
with one, or a "module:attr" reference, resolved when it is first run). Plugins add theirs
through the `register_apps` hook (llmos.hookspecs), as the built-in ones below do. The table
itself is llmos.plugins's, which fills it: reading `APPS` (or calling `lookup`) loads the
plugins first.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from llmos import plugins
from llmos.hookspecs import hookimpl
from llmos.plugins import AppEntry, lookup_app
from llmos.plugins import register_app as register
from llmos.syscalls import InvalidRequest, resolve_app

__all__ = ["APPS", "AppEntry", "bind", "lookup", "parse_argv", "register", "usage"]


class _Apps(MutableMapping[str, AppEntry]):
    """llmos.plugins's app table, read only once the plugins are loaded."""

    def __getitem__(self, name: str) -> AppEntry:
        return plugins.apps()[name]

    def __setitem__(self, name: str, entry: AppEntry) -> None:
        plugins.apps()[name] = entry

    def __delitem__(self, name: str) -> None:
        del plugins.apps()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(plugins.apps())

    def __len__(self) -> int:
        return len(plugins.apps())

    def __repr__(self) -> str:
        return f"APPS({sorted(self)})"


APPS: MutableMapping[str, AppEntry] = _Apps()


def lookup(ref: Any) -> Any:
    """The registered app called `ref`, else `ref` itself (a file or module reference)."""
    return lookup_app(ref)


def parse_argv(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Split command-line words into positional arguments and `--name value` options.

    `--name=value` and `--name value` give a string, a bare `--flag` gives True, dashes in
    names become underscores, and everything after `--` is positional."""
    args: list[str] = []
    options: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        word, i = argv[i], i + 1
        if word == "--":
            args += argv[i:]
            break
        if not word.startswith("--") or len(word) == 2:
            args.append(word)
            continue
        name, eq, value = word[2:].partition("=")
        if not eq:  # `--name value`, or a bare flag when no value follows
            value = True
            if i < len(argv) and not argv[i].startswith("--"):
                value, i = argv[i], i + 1
        options[name.replace("-", "_")] = value
    return args, options


def parse_argv_portable(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """parse_argv for an app that runs in another process on this machine, or later (the
    daemon; a durable process resumed by another kernel): option values that name an
    existing file or folder relative to this working folder are made absolute, so that
    `--file notes.txt` and `--docs notes/` name the same ones there. Positional words, often
    text, are left as they are."""
    positional, options = parse_argv(argv)
    return positional, {name: _absolute_if_path(value) for name, value in options.items()}


def _absolute_if_path(value: Any) -> Any:
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        path = Path(value).expanduser()
        if path.exists():
            return str(path.resolve())
    return value


def bind(ref: Any, args: list[Any], options: dict[str, Any]) -> Any:
    """The app named by `ref`, with `options` bound as keyword arguments; checked against
    its signature now, so a wrong call is a usage error rather than a failed process."""
    main = resolve_app(lookup(ref))
    try:
        inspect.signature(main).bind(None, *args, **options)
    except TypeError as exc:
        raise InvalidRequest(f"{exc}; usage: {usage(ref, main)}") from None
    if not options:
        return main

    async def bound(sys: Any, *more: Any) -> Any:
        return await main(sys, *more, **options)

    bound.__qualname__ = main.__qualname__
    return bound


def portable(ref: str) -> str:
    """A file reference ("app.py:main", "app.py") made absolute, so that another process on
    this machine (the daemon) finds the same file; any other reference as it is."""
    path, colon, attr = ref.rpartition(":")
    if colon and path.endswith(".py") and Path(path).expanduser().is_file():
        return f"{Path(path).expanduser().resolve()}:{attr}"
    if ref.endswith(".py") and Path(ref).expanduser().is_file():
        return str(Path(ref).expanduser().resolve())
    return ref


def reference(app: str) -> str:
    """The app as a reference another process can import: a registered name's
    "module:attr", or a file reference made absolute. A registered app given as a Python
    object has none (InvalidRequest)."""
    entry = APPS.get(app)
    if entry is None:
        return portable(app)
    if not isinstance(entry.app, str):
        raise InvalidRequest(f"the app {app!r} is registered as a Python object, not by reference, so it cannot "
                             "start in another process (the daemon); run the shell with --local")
    return entry.app


def usage(name: Any, main: Any) -> str:
    """`name TEXT [--target-lang VALUE]`, from the app's signature."""
    words = [str(name)]
    for param in list(inspect.signature(main).parameters.values())[1:]:
        flag = param.name.replace("_", "-")
        if param.kind is param.VAR_POSITIONAL:
            words.append(f"[{param.name.upper()}...]")
        elif param.kind is param.VAR_KEYWORD:
            words.append("[--OPTION VALUE...]")
        elif param.default is param.empty and param.kind is not param.KEYWORD_ONLY:
            words.append(param.name.upper())
        else:
            words.append(f"[--{flag} {str(param.default).upper() if param.default not in (None, '') else 'VALUE'}]")
    return " ".join(words)


BUILTIN = (
    ("generate", "llmos.apps.seed.text:generate", "continue a prompt as plain text"),
    ("chat", "llmos.apps.seed.text:chat", "talk with the model (no message: an interactive conversation)"),
    ("translate", "llmos.apps.seed.translate:main", "translate text (--target-lang en|zh|fr|es|de|ja)"),
    ("summarize", "llmos.apps.seed.summarize:main", "summarize text or a file (--file PATH); long input map-reduce"),
    ("codegen", "llmos.apps.seed.codegen:main", "write code for a description; prints only the code"),
    ("qa", "llmos.apps.seed.qa:main", "answer a question from documents: qa --docs FOLDER QUESTION"),
    ("workflow", "llmos.apps.workflows.spec:main", "run a multi-agent workflow described in a TOML or YAML file"),
    ("react", "llmos.apps.react:main", "answer a question by calling tools in a loop (--tools a,b --steps N)"),
    ("finetune", "llmos.apps.finetune_app:main", "LoRA fine-tune a model: finetune BASE --data FILE.jsonl --name NEW"),
)


@hookimpl
def register_apps(register: Any) -> None:
    for name, ref, summary in BUILTIN:
        register(name, ref, summary)
