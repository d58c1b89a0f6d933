"""The model library: names users ask for, and how each becomes a loaded driver."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmos.drivers.errors import UnknownModel
from llmos.drivers.weights import GgufSource, is_cached
from llmos.drivers import compute

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    load: Callable[[Path], object]  # home folder -> a ModelDriver
    aliases: tuple[str, ...] = ()
    source: GgufSource | None = field(default=None, compare=False)

    def cache_folder(self, home: Path) -> Path:
        return home / "models" / self.name


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    for key in (spec.name, *spec.aliases):
        _MODELS[key.lower()] = spec


def model_names() -> list[str]:
    return sorted({spec.name for spec in _MODELS.values()})


def models() -> list[ModelSpec]:
    return sorted({spec.name: spec for spec in _MODELS.values()}.values(), key=lambda s: s.name)


def find_model(name: str) -> ModelSpec:
    spec = _MODELS.get(name.lower())
    if spec is None:
        raise UnknownModel(f"no model named {name!r}; the models that exist are: {', '.join(model_names())}")
    return spec


def load_driver(name: str, home: Path) -> object:
    """Load a model by registered name, or a local Hugging Face model folder by path."""
    # Loading runs torch (de-quantizing, casting, packing weights): on the compute thread,
    # like every later step of the model (see llmos.drivers.compute).
    if Path(name).expanduser().is_dir() and is_cached(Path(name).expanduser()):
        from llmos.drivers.transformers_driver import load_transformers_folder  # torch loads here

        return compute.call(load_transformers_folder, Path(name).expanduser())
    spec = find_model(name)
    started = time.perf_counter()
    driver = compute.call(spec.load, home)
    log.info("loaded %s in %.1f s", spec.name, time.perf_counter() - started)
    return driver
