"""Sentence-transformers encoding, and a query encoder that batches concurrent requests.

Rollout workers send many searches at once and a GRPO group repeats the same queries, so
the server encodes whatever queries are waiting in one batch (a batch of 32 costs far less
than 32 single calls on a CPU) and remembers recent query embeddings.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from toolservers.errors import IndexUnusableError

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class Embedder:
    """A sentence-transformers model that returns L2-normalised float32 rows."""

    def __init__(self, name_or_path: str, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer  # heavy: import on demand

        local = Path(name_or_path).expanduser()
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        try:
            if local.is_dir():
                self.model = SentenceTransformer(str(local), device=device, local_files_only=True)
            else:
                self.model = SentenceTransformer(
                    name_or_path, device=device, local_files_only=offline
                )
        except OSError as exc:
            raise IndexUnusableError(
                f"cannot load embedding model {name_or_path!r}: {exc}. Pass a local "
                "sentence-transformers directory with --embedding-model, or go online once "
                "so the hub model is cached."
            ) from exc
        self.name = name_or_path
        self.dimension = int(self.model.get_embedding_dimension() or 0)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.asarray(vectors, dtype=np.float32)  # (len(texts), dimension)


class QueryEncoder:
    """Async front of an Embedder: coalesces concurrent queries and caches results.

    One batch runs at a time in a worker thread; queries that arrive meanwhile wait and go
    together in the next batch. No timer: a lone query is encoded at once.
    """

    def __init__(self, embedder: Embedder, max_batch: int = 64, cache_size: int = 4096) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._waiting: dict[str, list[asyncio.Future[np.ndarray]]] = {}
        self._running = False

    async def encode(self, query: str) -> np.ndarray:
        cached = self._cache.get(query)
        if cached is not None:
            self._cache.move_to_end(query)
            return cached
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(query, []).append(future)
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                queries = list(self._waiting)[: self.max_batch]
                futures = [self._waiting.pop(q) for q in queries]
                try:
                    vectors = await asyncio.to_thread(self.embedder.encode, queries)
                except Exception as exc:  # hand the failure to every waiter, keep serving
                    for waiters in futures:
                        for f in waiters:
                            if not f.done():
                                f.set_exception(exc)
                    continue
                for query, vector, waiters in zip(queries, vectors, futures, strict=True):
                    self._remember(query, vector)
                    for f in waiters:
                        if not f.done():
                            f.set_result(vector)
        finally:
            self._running = False

    def _remember(self, query: str, vector: np.ndarray) -> None:
        self._cache[query] = vector
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
