"""The packaged MiniLM sentence embedder (a model, in the drivers layer)."""

from __future__ import annotations

import numpy as np

from llmos.drivers import embeddings
from llmos.drivers.embeddings import DIMENSIONS, MINILM, embed
from llmos.memory.embedder import Embedder


def test_vectors_are_unit_length_and_meaningful() -> None:
    v = embed(["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."])
    assert v.shape == (3, DIMENSIONS) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.8 > 0.2 > v[0] @ v[2]


def test_batched_and_one_by_one_agree_and_order_is_kept() -> None:
    texts = ["short", "a much longer sentence about the weather in the mountains today", "mid length text"]
    batched = embed(texts)
    single = np.stack([embed([t])[0] for t in texts])
    assert np.allclose(batched, single, atol=1e-5)


def test_the_model_is_loaded_once() -> None:
    first = embeddings.embedder()
    assert embeddings.embedder() is first


def test_minilm_is_the_memory_layers_embedder() -> None:
    assert isinstance(MINILM, Embedder)
    assert np.array_equal(MINILM.embed(["hello"]), embed(["hello"]))
