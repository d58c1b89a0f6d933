"""Remote models in the model library: those configured in LLMOS_HOME/models.toml, and
ad-hoc references of the form "openai:http://host:port/v1#model-id".

    [models.big]
    base_url = "http://gpu:8000/v1"
    model = "Qwen/Qwen2.5-7B-Instruct"   # the server's model id (optional: its only model)
    api_key_env = "BIG_KEY"              # optional: the environment variable holding its key
    max_concurrency = 16
    context_length = 32768               # optional: else asked from the server
    description = "..."

The file is read whenever a model is looked up (as mcp.json is at each boot), so edits
and the LLMOS_HOME in force count; plugins, by contrast, load once per process.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmos.drivers import remote, remote_server
from llmos.drivers.registry import ModelSpec
from llmos.kernel.errors import ConfigError

CONFIG_FILE = "models.toml"
ADHOC_PREFIX = "openai:"  # "openai:<base_url>#<model id>" (the id may be left out: the server's only model)


class RemoteModel(BaseModel):
    """One [models.NAME] table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(pattern=r"^https?://[^/]")
    model: str | None = Field(default=None, min_length=1)
    api_key_env: str | None = Field(default=None, min_length=1)
    max_concurrency: int = Field(default=remote.DEFAULT_MAX_CONCURRENCY, ge=1, le=4096)
    context_length: int | None = Field(default=None, ge=2)
    timeout_s: float = Field(default=remote.DEFAULT_TIMEOUT_S, gt=0)
    connect_timeout_s: float = Field(default=remote.CONNECT_TIMEOUT_S, gt=0)
    retries: int = Field(default=remote.DEFAULT_RETRIES, ge=0, le=20)
    tokenizer: str | None = Field(default=None, pattern="^(" + "|".join(remote_server.ServerTokenizer.DIALECTS) + ")$")
    description: str = ""
    aliases: tuple[str, ...] = ()

    def driver(self, name: str, where: str) -> remote.RemoteDriver:
        """Connect (blocking). `where` names the configuration, for errors."""
        key = None
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"{where}: api_key_env names {self.api_key_env}, which is not set")
        return remote.RemoteDriver(self.base_url, self.model, key, context_length=self.context_length,
                                   max_concurrency=self.max_concurrency, timeout_s=self.timeout_s,
                                   connect_timeout_s=self.connect_timeout_s, retries=self.retries, name=name,
                                   tokenizer=self.tokenizer)

    def spec(self, name: str, where: str) -> ModelSpec:
        what = self.model or "its only model"
        return ModelSpec(name=name, description=self.description or f"{what} at {self.base_url}",
                         load=lambda home: self.driver(name, where), aliases=self.aliases)


def read_models(path: Path) -> dict[str, RemoteModel]:
    """The models a models.toml configures (none if there is no such file); ConfigError,
    naming the file and the key, for a bad one."""
    if not path.is_file():
        return {}
    try:
        config = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(config) - {"models"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}: the file holds [models.NAME] tables")
    tables = config.get("models", {})
    if not isinstance(tables, Mapping):
        raise ConfigError(f"{path}: 'models' must be a table of [models.NAME] tables")
    return {name: _parse(path, name, table) for name, table in tables.items()}


def _parse(path: Path, name: str, table: Any) -> RemoteModel:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: models.{name} must be a table")
    try:
        return RemoteModel.model_validate(table)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: models.{name}.{key}: {first['msg']}") from None


def configured(home: Path) -> list[ModelSpec]:
    """The remote models LLMOS_HOME/models.toml configures, as model library entries."""
    path = home / CONFIG_FILE
    return [model.spec(name, f"{path} [models.{name}]") for name, model in read_models(path).items()]


def adhoc(reference: str) -> ModelSpec | None:
    """A spec for "openai:<base_url>#<model id>", or None if `reference` is not of that form."""
    if not reference.startswith(ADHOC_PREFIX):
        return None
    url, _, model = reference.removeprefix(ADHOC_PREFIX).partition("#")
    try:
        config = RemoteModel(base_url=url, model=model or None)
    except ValidationError:
        raise ConfigError(f"{reference!r}: expected {ADHOC_PREFIX}http(s)://host:port/v1#model-id") from None
    return config.spec(model or url, repr(reference))


def lookup(name: str, home: Path) -> ModelSpec | None:
    """The remote model called `name` (an ad-hoc reference, or a name or alias in models.toml)."""
    spec = adhoc(name)
    if spec is not None:
        return spec
    wanted = name.lower()
    return next((s for s in configured(home) if wanted in (s.name.lower(), *map(str.lower, s.aliases))), None)
