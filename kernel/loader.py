"""Turns what a user names as an app into the coroutine function the kernel runs."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import reprlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmos.kernel.errors import InvalidRequest

AppMain = Callable[..., Any]


def resolve_app(app: Any) -> AppMain:
    """An `async def main(sys, *args)`, a class with such a `main`, or a reference to
    either: "pkg.module:attr" or "path/to/file.py:attr" (attr defaults to "main")."""
    if isinstance(app, str):
        app = _load_reference(app)
    if inspect.isclass(app):
        try:
            app = getattr(app(), "main", None)
        except Exception as exc:
            raise InvalidRequest(f"app class {app.__name__} must be constructible with no arguments: {exc}") from None
    if not inspect.iscoroutinefunction(app):
        raise InvalidRequest(f"an app must be an 'async def main(sys, *args)' or a class with one, not "
                             f"{reprlib.repr(app)}")  # bounded: an app may be any nested value
    return app


def _load_reference(ref: str) -> Any:
    target, _, attr = ref.partition(":")
    attr = attr or "main"
    module = _load_file(target) if target.endswith(".py") else _import(target)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InvalidRequest(f"{target!r} has no attribute {attr!r}") from None


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a bad name (ValueError, TypeError) or a module that fails to import
        raise InvalidRequest(f"cannot import app module {name!r}: {type(exc).__name__}: {exc}") from None


def _load_file(path_text: str) -> Any:
    """The module of an app file, loaded again whenever the file changed since it was last
    loaded (a long-lived kernel, the daemon, must run the code as it is now)."""
    try:
        path = Path(path_text).expanduser().resolve()
        exists = path.is_file()
    except (ValueError, OSError, RuntimeError) as exc:  # a NUL, an unencodable name, "~nobody-known/"
        raise InvalidRequest(f"app file {reprlib.repr(path_text)} cannot be a path: {exc}") from None
    if not exists:
        raise InvalidRequest(f"app file {path_text!r} does not exist")
    # Named from the path's digest, not hash(): the same in every Python process.
    module_name = f"llmos_app_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"
    version = _version(path)
    loaded = sys.modules.get(module_name)
    if loaded is not None and getattr(loaded, "__llmos_version__", None) == version:
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__llmos_version__ = version  # type: ignore[attr-defined]
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit at import too: a bad file is the caller's error, never the kernel's
        del sys.modules[module_name]
        if isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
            raise
        raise InvalidRequest(f"app file {path_text!r} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def _version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def reference(app: Any) -> str:
    """`app` as a reference another Python process can import, for a durable process's
    record: "module:attr" or "/absolute/path/app.py:attr". An app that has none (a function
    defined inside another, a lambda, an object) is refused with InvalidRequest."""
    if isinstance(app, str):
        target, colon, attr = app.partition(":")
        resolve_app(app)  # it must load now, too
        if target.endswith(".py"):
            return f"{Path(target).expanduser().resolve()}:{attr or 'main'}"
        return f"{target}:{attr or 'main'}"
    module, qualname = getattr(app, "__module__", None), getattr(app, "__qualname__", "")
    if not module or not qualname or "<" in qualname:
        raise InvalidRequest(f"a durable process's app must be importable by reference (an app name, "
                             f"'module:attr' or 'path/app.py:attr'), and {app!r} is not: define it at a "
                             "module's top level")
    loaded = sys.modules.get(module)
    if module == "__main__" or hasattr(loaded, "__llmos_version__"):
        # a script's app, or one from an app file loaded by path: another process finds it by the file's path
        path = getattr(loaded, "__file__", None)
        if path is None:
            raise InvalidRequest(f"{qualname} is defined in an interactive session, not in a file: a durable "
                                 "process's app must be importable by reference")
        return f"{Path(path).resolve()}:{qualname}"
    ref = f"{module}:{qualname}"
    found = _attribute(_import(module), qualname)
    if found is not app:
        raise InvalidRequest(f"{ref} does not name {app!r}: a durable process's app must be importable by reference")
    return ref


def _attribute(module: Any, dotted: str) -> Any:
    value = module
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value


def bind(main: AppMain, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AppMain:
    """`main` with `kwargs` bound, once `args` and `kwargs` are checked against its signature (EINVAL)."""
    try:
        inspect.signature(main).bind(None, *args, **kwargs)
    except TypeError as exc:
        raise InvalidRequest(f"cannot start {getattr(main, '__qualname__', main)}: {exc} "
                             f"(its signature is {inspect.signature(main)})") from None
    if not kwargs:
        return main

    async def bound(sys: Any, *more: Any) -> Any:
        return await main(sys, *more, **kwargs)

    bound.__qualname__ = getattr(main, "__qualname__", "app")
    return bound
