"""Sentence-transformers encoding, and a query encoder that batches concurrent requests.

Rollout workers send many searches at once and a GRPO group repeats the same queries, so
the server encodes whatever queries are waiting in one batch (a batch of 32 costs far less
than 32 single calls on a CPU) and remembers recent query embeddings.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from toolservers.errors import IndexUnusableError

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
QUERY_WORKERS_ENV = "TOOLGYM_QUERY_WORKERS"
# Smallest batch worth starting beside a running one. Per query, on one thread, a batch of 8
# short queries costs ~15% more than one of 64, a batch of 1 ~3x; 8 lets 16 clients use 2 cores.
MIN_PARALLEL_BATCH = 8


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


def query_workers() -> int:
    """How many query batches may encode at once: one per core, each on one torch thread.

    Query batches are small (tens of queries of ~15 tokens). Several single-threaded batches
    side by side use the cores without any synchronisation, whereas one batch spread over an
    OpenMP team stalls at every barrier whenever a core is busy elsewhere (the event loop,
    another process): on 2 cores that other processes kept busy, one batch on 2 threads ran
    at 30-50% of the speed of one batch on 1 thread. `TOOLGYM_QUERY_WORKERS` overrides.
    """
    configured = os.environ.get(QUERY_WORKERS_ENV, "").strip()
    if configured:
        return max(1, int(configured))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _single_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # for this (encoder) thread


class QueryEncoder:
    """Async front of an Embedder: coalesces concurrent queries and caches results.

    Queries that arrive while the encoder is busy wait and go together in a later batch; a
    query already waiting or being encoded is not encoded twice. Up to `query_workers()`
    batches run at once, each on its own thread with one torch thread. A lone query is
    encoded at once (no timer); a batch starts beside a running one only once
    `MIN_PARALLEL_BATCH` queries wait, so that small batches do not take the CPU that large
    ones use better. `batches`, `encoded` and `cache_hits` count what happened.
    """

    def __init__(self, embedder: Embedder, max_batch: int = 64, cache_size: int = 4096) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.cache_size = cache_size
        self.workers = query_workers()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._waiting: dict[str, list[asyncio.Future[np.ndarray]]] = {}
        self._encoding: dict[str, list[asyncio.Future[np.ndarray]]] = {}  # in running batches
        self._running = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0
        self.encoded = 0
        self.cache_hits = 0

    async def encode(self, query: str) -> np.ndarray:
        cached = self._cache.get(query)
        if cached is not None:
            self._cache.move_to_end(query)
            self.cache_hits += 1
            return cached
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop: what the last one left is not ours
            self._loop, self._running = loop, 0
            self._waiting.clear()
            self._encoding.clear()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        encoding = self._encoding.get(query)
        if encoding is not None:  # a running batch holds it already: share that result
            encoding.append(future)
        else:
            self._waiting.setdefault(query, []).append(future)
            self._dispatch(loop)
        return await future

    def _encoder_threads(self) -> ThreadPoolExecutor:
        # Long-lived threads of our own, so their torch setting sticks and touches nothing else.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.workers,
                thread_name_prefix="query-encoder",
                initializer=_single_torch_thread,
            )
        return self._executor

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start batches from the waiting queries while an encoder thread is free."""
        while self._waiting and self._running < self.workers:
            waiting = len(self._waiting)
            if self._running and waiting < MIN_PARALLEL_BATCH:
                return  # a batch is running: let more gather rather than start a tiny one
            free = self.workers - self._running
            size = min(self.max_batch, max(MIN_PARALLEL_BATCH, -(-waiting // free)))
            queries = list(itertools.islice(self._waiting, size))
            futures = [self._waiting.pop(q) for q in queries]
            self._encoding.update(zip(queries, futures, strict=True))
            self._running += 1
            job = loop.run_in_executor(self._encoder_threads(), self._encode_batch, queries)
            job.add_done_callback(functools.partial(self._finish, loop, queries, futures))

    def _encode_batch(self, queries: list[str]) -> np.ndarray:
        return self.embedder.encode(queries, batch_size=len(queries))  # (len(queries), dim)

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        queries: list[str],
        futures: list[list[asyncio.Future[np.ndarray]]],
        job: asyncio.Future[np.ndarray],
    ) -> None:
        self._running -= 1
        for query in queries:
            self._encoding.pop(query, None)
        failure = None if job.cancelled() else job.exception()
        if job.cancelled() or failure is not None:  # fail every waiter, keep serving
            for waiters in futures:
                for f in waiters:
                    if f.done():
                        continue
                    if failure is None:
                        f.cancel()
                    else:
                        f.set_exception(failure)
        else:
            self.batches += 1
            self.encoded += len(queries)
            for query, vector, waiters in zip(queries, job.result(), futures, strict=True):
                self._remember(query, vector)
                for f in waiters:
                    if not f.done():
                        f.set_result(vector)
        self._dispatch(loop)

    def _remember(self, query: str, vector: np.ndarray) -> None:
        if self.cache_size <= 0:
            return
        self._cache[query] = vector
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
