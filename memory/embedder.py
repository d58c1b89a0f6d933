"""What the vector store needs of an embedding model: texts in, unit vectors out.

The memory layer never loads a model itself: the composition root (llmos.boot) hands
the store the drivers' embedder (llmos.drivers.embeddings.MINILM), as it hands the kernel
a model driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np


@runtime_checkable
class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A (len(texts), dimensions) float32 array of unit vectors, in the order of `texts`.
        Blocking: the store calls it in a worker thread, never on the event loop."""
        ...
