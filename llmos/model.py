"""`llmos.load_model(...)`: the model library's face, for synchronous code.

A `Model` is synchronous, like the seed documents' examples; behind it, each call runs as
a process on a kernel in a background thread (llmos.runtime, where `Model` lives). A loaded
model can also be handed to `llmos.boot(model=...)`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from llmos import plugins
from llmos.booting import load_driver
from llmos.drivers import registry, remote_models
from llmos.drivers.weights import is_cached
from llmos.home import llmos_home
from llmos.library import default_model
from llmos.runtime import Model

__all__ = ["Dtype", "Model", "ModelListing", "available_models", "load_model", "model_names"]

Dtype = Literal["auto", "float32", "bfloat16"]
Quant = Literal["auto", "none", "int8", "int4"]


def load_model(name: str | None = None, *, dtype: Dtype | None = None, quant: Quant | None = None) -> Model:
    """Load a model by name (`llmos models` lists them) or a local Hugging Face folder by path;
    None: the library's default (`llmos models default NAME`), else DEFAULT_MODEL (smollm2).

    `dtype` ("float32", "bfloat16" or "auto") sets the precision on the CPU; by default
    LLMOS_DTYPE, else bfloat16 where the CPU multiplies it natively, else float32.
    `quant` ("none", "int8", "int4" or "auto") the weights that decode steps of a few
    agents stream (drivers/quant.py); by default LLMOS_QUANT, else measured at load.
    Raises `UnknownModel` (listing the names that exist), `ModelUnavailable`, or
    `ConfigError` for a dtype or quantization that is not one of those."""
    return Model(load_driver(name or default_model(), dtype, quant))


class ModelListing(BaseModel):
    name: str
    aliases: tuple[str, ...]
    description: str
    cached: bool  # weights are ready under LLMOS_HOME: loading takes about a second


def available_models() -> list[ModelListing]:
    """The models `load_model` knows, and whether each is ready on this machine (a remote
    model of LLMOS_HOME/models.toml always is: it is fetched by no one)."""
    plugins.load()
    home = llmos_home()
    local = [ModelListing(name=s.name, aliases=s.aliases, description=s.description,
                          cached=is_cached(s.cache_folder(home))) for s in registry.models()]
    remote = [ModelListing(name=s.name, aliases=s.aliases, description=s.description, cached=True)
              for s in remote_models.configured(home)]  # LLMOS_HOME/models.toml: served elsewhere, nothing to fetch
    return local + remote


def model_names() -> list[str]:
    """The names `load_model` knows (aliases aside)."""
    plugins.load()
    return registry.model_names()
