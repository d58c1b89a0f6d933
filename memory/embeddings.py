"""llmos's embedding function, registered with chromadb.

The store computes embeddings itself (with the `Embedder` it was given) and hands them to
chromadb with the texts. Its collections are still created with this registered function,
so that a collection never falls back to chromadb's default one, which downloads a model
at run time. The function holds the store's embedder; rebuilt by chromadb from a
collection's config it has none, and says so if it is ever called.
"""

from __future__ import annotations

from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from llmos.kernel.errors import MemoryUnavailable
from llmos.memory.embedder import Embedder


@register_embedding_function
class LlmosEmbeddingFunction(EmbeddingFunction[Documents]):
    """An `Embedder` as a chromadb embedding function."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder

    def __call__(self, input: Documents) -> Embeddings:  # noqa: A002 - chromadb's parameter name
        if self.embedder is None:
            raise MemoryUnavailable("llmos's chromadb embedding function was rebuilt from a collection's config, "
                                    "which holds no embedding model; llmos embeds through its store "
                                    "(llmos.memory.store.ChromaStore), which passes the vectors to chromadb")
        return list(self.embedder.embed(list(input)))

    @staticmethod
    def name() -> str:
        return "llmos-minilm-l6-v2"

    def default_space(self) -> Any:
        return "cosine"

    def supported_spaces(self) -> list[Any]:
        return ["cosine", "ip", "l2"]

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> LlmosEmbeddingFunction:
        return LlmosEmbeddingFunction()

    def get_config(self) -> dict[str, Any]:
        return {}
