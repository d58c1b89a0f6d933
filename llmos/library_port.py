"""The model library of one LLMOS_HOME as the kernel's `ModelLibrary` (kernel/library.py):
the `models.*` syscalls, and so the daemon's /v1/library routes, act through it.

Its errors are the kernel's: the library's own (ConfigError and its kind, raised by
llmos.library and llmos.pull for the command line) are turned into NoSuchModel or
InvalidRequest here, with the same sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from llmos import library, library_listing, pull as pulling
from llmos.drivers.errors import UnknownModel
from llmos.kernel.errors import ConfigError, InvalidRequest, NoSuchModel
from llmos.kernel.library import ModelCard, ModelRow

T = TypeVar("T")


@contextmanager
def _as_syscall_errors() -> Iterator[None]:
    try:
        yield
    except UnknownModel as exc:
        raise NoSuchModel(str(exc)) from None
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from None
    except (OSError, ValueError) as exc:  # a path the OS refuses (a NUL, a lone surrogate, no access)
        raise InvalidRequest(f"{type(exc).__name__}: {exc}") from None


class HomeLibrary:
    """The library under `home` (the kernel's LLMOS_HOME, fixed at boot)."""

    def __init__(self, home: Path, pull: Callable[..., str] = pulling.pull) -> None:
        self.home = home
        self._pull = pull  # tests hand a pull whose pip is local

    def _do(self, action: Callable[[], T]) -> T:
        with _as_syscall_errors():
            return action()

    def list(self, loaded: Collection[str]) -> list[ModelRow]:
        return self._do(lambda: library_listing.list_models(self.home, loaded=loaded))

    def show(self, name: str) -> ModelCard:
        return self._do(lambda: library_listing.show(name, self.home))

    def import_path(self, path: str, name: str | None) -> str:
        return self._do(lambda: library.import_path(Path(path), name, self.home))

    def create(self, name: str, base: str, system: str | None, adapter: str | None, params: dict[str, Any]) -> None:
        self._do(lambda: library.create(name, base, system=system, adapter=Path(adapter) if adapter else None,
                                        params=params, home=self.home))

    def copy(self, source: str, destination: str) -> None:
        self._do(lambda: library.copy(source, destination, self.home))

    def remove(self, name: str) -> str:
        return self._do(lambda: library.remove(name, self.home))

    def default(self) -> str:
        return self._do(lambda: library.default_model(self.home))

    def set_default(self, name: str | None) -> str:
        self._do(lambda: library.set_default(name, self.home))
        return self.default()

    def add_remote(self, name: str, url: str, model_id: str | None, api_key_env: str | None) -> None:
        self._do(lambda: library.add_remote(name, url, model_id=model_id, api_key_env=api_key_env, home=self.home))

    def pull(self, name: str) -> str:
        return self._do(lambda: self._pull(name, self.home))
