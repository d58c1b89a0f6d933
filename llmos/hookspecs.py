"""The hooks a plugin implements (pluggy, project name "llmos"). Each gets a callback.

A plugin is a module (or object) with functions marked `@hookimpl`, found through the
`llmos` entry-point group; built-in models, tools and apps use the same hooks.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("llmos")
hookimpl = pluggy.HookimplMarker("llmos")


@hookspec
def register_models(register: Any) -> None:
    """Add models to the model library: `register(llmos.drivers.ModelSpec(...))`."""


@hookspec
def register_tools(register: Any) -> None:
    """Add tools: `register(fn_or_tool, trusted=None)`; untrusted ones run in the sandbox."""


@hookspec
def register_apps(register: Any) -> None:
    """Add apps for `llmos run NAME`: `register(name, app, summary)`."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the `llmos` command (a typer.Typer)."""
