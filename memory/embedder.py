"""What the vector store needs of an embedding model: texts in, unit vectors out.

The memory layer never loads a model itself: the composition root (llmos.boot) hands
the store the drivers' embedder (llmos.drivers.embeddings.MINILM), as it hands the kernel
a model driver. The interface is the kernel's (`llmos.kernel.model.Embedder`).
"""

from llmos.kernel.model import Embedder

__all__ = ["Embedder"]
