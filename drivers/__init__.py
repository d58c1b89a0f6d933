"""llmos.drivers: model drivers (transformers; a fake one lives in llmos.testing), the model
library, the sentence embedder (llmos.drivers.embeddings) and tools.

Importing it loads no torch: a model loads torch when it is loaded. The models themselves
(llmos.drivers.smollm2, ...) join the library through the plugin hooks (llmos.plugins).
"""

from llmos.drivers.errors import ModelUnavailable, UnknownModel
from llmos.drivers.registry import DEFAULT_MODEL, ModelSpec, find_model, load_driver, model_names, register_model

__all__ = ["DEFAULT_MODEL", "ModelSpec", "ModelUnavailable", "UnknownModel", "find_model", "load_driver",
           "model_names", "register_model"]
