"""The vector store: chromadb, embedded (PersistentClient) or a `chroma run` server (HttpClient).

One chromadb collection per namespace. Embeddings are computed here, batched, in a worker
thread, by the `Embedder` the store is given (the composition root gives it the drivers'
MiniLM), and handed to chromadb with the texts; the collections are still created with
llmos's registered embedding function, so nothing ever falls back to chromadb's default.

An embedded store has one writer process: a file lock in its folder, held from open to
close, turns a second kernel on the same folder into a clear `StoreLocked` error.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anyio.to_thread
import chromadb
from chromadb.config import Settings
from filelock import FileLock, Timeout

from llmos.kernel.errors import InvalidRequest, MemoryUnavailable, StoreLocked
from llmos.kernel.memory import MemoryItem, Metadata
from llmos.memory.embedder import Embedder
from llmos.memory.embeddings import LlmosEmbeddingFunction

LOCK_FILE = "llmos-writer.lock"
SETTINGS = dict(anonymized_telemetry=False)  # a store never phones home


def collection_name(namespace: str) -> str:
    """A valid chromadb collection name, one per namespace, readable and collision-free."""
    slug = re.sub(r"[^a-zA-Z0-9_-]+", "-", namespace).strip("-_")[:40] or "ns"
    return f"llmos-{slug}-{hashlib.sha256(namespace.encode()).hexdigest()[:12]}"


class ChromaStore:
    """`MemoryStore` on a chromadb client, embedding with `embedder`. Every call runs in a
    worker thread."""

    def __init__(self, client: Any, location: str, lock: FileLock | None = None, *, embedder: Embedder) -> None:
        self.client = client
        self.location = location
        self.embedder = embedder
        self._lock = lock
        self._collections: dict[str, Any] = {}
        self._guard = threading.Lock()
        self._max_batch = client.get_max_batch_size()

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open_folder(cls, folder: Path, embedder: Embedder) -> ChromaStore:
        """The embedded store in `folder`, as its one writer (blocking; call it in a thread)."""
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / LOCK_FILE, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise StoreLocked(f"the memory store at {folder} is in use by another llmos process (its writer lock "
                              f"{folder / LOCK_FILE} is held); stop that process, use another LLMOS_HOME, or share "
                              f"a `chroma run` server with memory='http://host:port'") from None
        try:
            return cls(chromadb.PersistentClient(path=str(folder), settings=Settings(**SETTINGS)), str(folder), lock,
                       embedder=embedder)
        except Exception:
            lock.release()
            raise

    @classmethod
    def open_server(cls, url: str, embedder: Embedder) -> ChromaStore:
        """A `chroma run` server, e.g. http://127.0.0.1:8000 (blocking)."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidRequest(f"a chroma server address looks like http://host:port, not {url!r}")
        try:
            client = chromadb.HttpClient(host=parsed.hostname, port=parsed.port or 8000, ssl=parsed.scheme == "https",
                                         settings=Settings(**SETTINGS))
            client.heartbeat()
        except Exception as exc:
            raise MemoryUnavailable(f"cannot reach the chroma server at {url}: {exc}") from None
        return cls(client, url, embedder=embedder)

    # -- MemoryStore --------------------------------------------------------------------------
    # A call stuck in its worker thread is abandoned when its caller is cancelled (a kill, the
    # bound of kernel/memory.py's BoundedStore): writes are idempotent by id, reads harmless.
    async def add(self, namespace: str, texts: Sequence[str], metadatas: Sequence[Metadata],
                  ids: Sequence[str]) -> None:
        if texts:
            await anyio.to_thread.run_sync(self._add, namespace, list(texts), list(metadatas), list(ids), abandon_on_cancel=True)

    async def query(self, namespace: str, text: str, k: int, where: Metadata | None = None) -> list[MemoryItem]:
        return await anyio.to_thread.run_sync(self._query, namespace, text, k, where, abandon_on_cancel=True)

    async def get(self, namespace: str, ids: Sequence[str]) -> list[MemoryItem]:
        return await anyio.to_thread.run_sync(self._get, namespace, list(ids), abandon_on_cancel=True)

    async def delete(self, namespace: str, ids: Sequence[str]) -> None:
        await anyio.to_thread.run_sync(lambda: self._collection(namespace).delete(ids=list(ids)), abandon_on_cancel=True)

    async def count(self, namespace: str) -> int:
        return await anyio.to_thread.run_sync(lambda: self._collection(namespace).count(), abandon_on_cancel=True)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._close)

    # -- blocking work, in worker threads ---------------------------------------------------------
    def _collection(self, namespace: str) -> Any:
        with self._guard:
            if namespace not in self._collections:
                self._collections[namespace] = self.client.get_or_create_collection(
                    collection_name(namespace), metadata={"llmos_namespace": namespace},
                    configuration={"hnsw": {"space": "cosine"}}, embedding_function=LlmosEmbeddingFunction(self.embedder))
            return self._collections[namespace]

    def _add(self, namespace: str, texts: list[str], metadatas: list[Metadata], ids: list[str]) -> None:
        collection = self._collection(namespace)
        vectors = self.embedder.embed(texts)
        for i in range(0, len(texts), self._max_batch):
            part = slice(i, i + self._max_batch)
            collection.upsert(ids=ids[part], documents=texts[part], metadatas=metadatas[part],
                              embeddings=vectors[part])

    def _query(self, namespace: str, text: str, k: int, where: Metadata | None) -> list[MemoryItem]:
        collection = self._collection(namespace)
        vector = self.embedder.embed([text])
        try:
            found = collection.query(query_embeddings=vector, n_results=k, where=where or None,
                                     include=["documents", "metadatas", "distances"])
        except ValueError as exc:  # chromadb's word for a malformed `where`
            raise InvalidRequest(f"bad 'where' filter {where!r}: {exc}") from None
        return [MemoryItem(id=i, text=doc, namespace=namespace, metadata=meta or {}, score=round(1.0 - dist, 6))
                for i, doc, meta, dist in zip(found["ids"][0], found["documents"][0], found["metadatas"][0],
                                              found["distances"][0], strict=True)]

    def _get(self, namespace: str, ids: list[str]) -> list[MemoryItem]:
        found = self._collection(namespace).get(ids=ids, include=["documents", "metadatas"])
        return [MemoryItem(id=i, text=doc, namespace=namespace, metadata=meta or {})
                for i, doc, meta in zip(found["ids"], found["documents"], found["metadatas"], strict=True)]

    def _close(self) -> None:
        self._collections.clear()
        try:
            self.client.close()  # stops chromadb's system for the folder: a later open reads it anew
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None


def open_store(spec: str | Path, embedder: Embedder) -> ChromaStore:
    """`spec` is a folder, or http(s)://host:port of a `chroma run` server (blocking)."""
    text = str(spec)
    if text.startswith(("http://", "https://")):
        return ChromaStore.open_server(text, embedder)
    return ChromaStore.open_folder(Path(text).expanduser(), embedder)
