"""llmos's chromadb embedding function: registered, and holding the store's embedder."""

from __future__ import annotations

import pytest
from chromadb.utils.embedding_functions import known_embedding_functions

from llmos.drivers.embeddings import DIMENSIONS, MINILM
from llmos.kernel.errors import MemoryUnavailable
from llmos.memory.embeddings import LlmosEmbeddingFunction


def test_registered_with_chromadb_and_embeds_with_its_embedder() -> None:
    assert known_embedding_functions[LlmosEmbeddingFunction.name()] is LlmosEmbeddingFunction
    fn = LlmosEmbeddingFunction(MINILM)
    [vector] = fn(["hello"])
    assert len(vector) == DIMENSIONS
    assert fn.default_space() == "cosine" and not fn.is_legacy()


def test_rebuilt_from_config_it_has_no_model_and_says_so() -> None:
    fn = LlmosEmbeddingFunction.build_from_config(LlmosEmbeddingFunction(MINILM).get_config())
    assert fn.default_space() == "cosine"
    with pytest.raises(MemoryUnavailable, match="no embedding model"):
        fn(["hello"])
