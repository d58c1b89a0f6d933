"""llmos.drivers: model drivers (transformers; a fake one lives in llmos.testing) and the model library."""

from llmos.drivers import smollm2 as _smollm2  # noqa: F401  registers the default model
from llmos.drivers.errors import ModelUnavailable, UnknownModel
from llmos.drivers.registry import DEFAULT_MODEL, ModelSpec, find_model, load_driver, model_names, register_model

__all__ = ["DEFAULT_MODEL", "ModelSpec", "ModelUnavailable", "UnknownModel", "find_model", "load_driver",
           "model_names", "register_model"]
