"""Plugins: the built-in ones and those installed under the `llmos` entry-point group.

`load()` registers every plugin, then calls its hooks so that its models, tools and apps
join the model library (llmos.drivers.registry), the tool registry (llmos.drivers.tools)
and the app table below. It runs once, when something first needs what plugins register:
`llmos.boot()`, `llmos.load_model()` and the model listings, the app registry, the `llmos`
command. `import llmos` alone loads no plugin. LLMOS_PLUGINS restricts which installed plugins load: a comma-separated list of
entry-point names ("" loads none of them); unset, all load. Built-ins always load.

A plugin's tools run in the sandbox unless the tool says `trusted=True` or the plugin
module sets `llmos_trusted = True`. A plugin that fails to load is reported by
`llmos plugins` and skipped; it never stops llmos from starting.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from llmos import hookspecs

log = logging.getLogger(__name__)

GROUP = "llmos"  # the entry-point group plugins declare: [project.entry-points.llmos] NAME = "module"
ENV = "LLMOS_PLUGINS"
BUILTIN = {  # name -> module; each uses the same hooks as an outside plugin
    "llmos.models": "llmos.drivers.smollm2",
    "llmos.tools": "llmos.drivers.tools.builtin",
    "llmos.apps": "llmos.apps.registry",
}


@dataclass
class PluginInfo:
    name: str
    source: str  # the module, and the distribution it came from
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    error: str | None = None  # why it did not load


@dataclass(frozen=True)
class AppEntry:
    name: str
    app: Any  # anything the kernel can run, or a "module:attr" reference resolved when first run
    summary: str


APPS: dict[str, AppEntry] = {}  # name -> app, filled by the register_apps hooks (read it through apps())


def register_app(name: str, app: Any, summary: str = "") -> None:
    """Make `app` runnable by name (`llmos run NAME`, `Model.run(NAME)`). The plugins load
    first, so an app registered by hand wins over a plugin's of the same name."""
    load()
    APPS[name] = AppEntry(name, app, summary)


def apps() -> dict[str, AppEntry]:
    """The registered apps, the plugins' included."""
    load()
    return APPS


def lookup_app(ref: Any) -> Any:
    """The registered app called `ref`, else `ref` itself (a file or module reference)."""
    entry = apps().get(ref) if isinstance(ref, str) else None
    return entry.app if entry else ref


manager = pluggy.PluginManager("llmos")
manager.add_hookspecs(hookspecs)
_infos: dict[str, PluginInfo] = {}
_lock = threading.RLock()
_loaded = False
_loading = False  # in load(): a call from a plugin being loaded returns at once


def allowed(name: str) -> bool:
    wanted = os.environ.get(ENV)
    return wanted is None or name in {n.strip() for n in wanted.split(",") if n.strip()}


def load() -> None:
    """Register the built-in and the allowed installed plugins and run their hooks; once per
    process, whichever thread asks first (the others wait for it)."""
    global _loaded, _loading
    if _loaded:
        return
    with _lock:
        if _loaded or _loading:
            return
        _loading = True
        try:
            for name, module in BUILTIN.items():
                _add(name, lambda module=module: importlib.import_module(module), f"{module} (built in)",
                     builtin=True)
            for point in entry_points(group=GROUP):
                if allowed(point.name) and point.name not in _infos:
                    dist = f"{point.dist.name} {point.dist.version}" if point.dist else "?"
                    _add(point.name, point.load, f"{point.value} ({dist})", builtin=False)
            _run_hooks()
        finally:
            _loaded, _loading = True, False


def _add(name: str, load_plugin: Callable[[], Any], source: str, builtin: bool) -> None:
    info = _infos[name] = PluginInfo(name, source, builtin)
    try:
        manager.register(load_plugin(), name=name)
    except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, never fatal
        info.error = f"{type(exc).__name__}: {exc}"
        log.warning("plugin %s did not load: %s", name, info.error)


def _run_hooks() -> None:
    from llmos.drivers import register_model
    from llmos.drivers.tools import register_tool

    for hook, register in (("register_models", lambda plugin: register_model),
                           ("register_tools", lambda plugin: _tool_registrar(plugin, register_tool)),
                           ("register_apps", lambda plugin: register_app)):
        for impl in getattr(manager.hook, hook).get_hookimpls():
            info = _infos[impl.plugin_name]
            info.hooks.append(hook)
            try:
                impl.function(register=register(impl.plugin_name))
            except Exception as exc:  # noqa: BLE001
                info.error = f"{hook}: {type(exc).__name__}: {exc}"
                log.warning("plugin %s failed in %s: %s", impl.plugin_name, hook, exc)


def _tool_registrar(plugin_name: str, register_tool: Callable[..., Any]) -> Callable[..., Any]:
    info = _infos[plugin_name]
    default_trusted = info.builtin or bool(getattr(manager.get_plugin(plugin_name), "llmos_trusted", False))

    def register(obj: Any, trusted: bool | None = None) -> Any:
        return register_tool(obj, source=plugin_name, trusted=trusted, default_trusted=default_trusted)

    return register


def register_commands(cli: Any) -> None:
    """Let every plugin add subcommands to the `llmos` typer app."""
    load()
    for impl in manager.hook.register_commands.get_hookimpls():
        _infos[impl.plugin_name].hooks.append("register_commands")
    manager.hook.register_commands(cli=cli)


def plugins() -> list[PluginInfo]:
    load()
    return list(_infos.values())
