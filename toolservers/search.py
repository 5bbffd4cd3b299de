"""Ranked retrieval over a loaded index: dense (FAISS), lexical (BM25) or hybrid (RRF).

Dense searches that become ready in the same event-loop turn (the queries of one encoder
batch do) go to FAISS as one matrix: a flat index is scanned once for all of them instead of
once per query, which matters when the encoder threads keep the caches busy.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import faiss
import numpy as np

from toolservers.chunking import Chunk
from toolservers.embedding import QueryEncoder
from toolservers.index import LoadedIndex, SearchMode
from toolservers.snippets import SnippetChunks

# Reciprocal-rank-fusion constant; 60 is the customary value and is insensitive in practice.
RRF_K = 60
# Chunks fetched per wanted document: several chunks of one filing often rank together.
OVERFETCH = 4


@dataclass(frozen=True, slots=True)
class Hit:
    chunk: Chunk
    score: float


class Searcher:
    def __init__(self, index: LoadedIndex, encoder: QueryEncoder | None) -> None:
        self.index = index
        self.mode = index.manifest.search
        if self.mode.uses_dense and encoder is None:
            raise ValueError(f"{self.mode} search needs a query encoder")
        self.encoder = encoder
        self.snippet_chunks = SnippetChunks(index.chunks)
        # Dense searches waiting for the next flush: (query vector, k, future of the ranking),
        # and the event loop that flush is scheduled on.
        self._pending: list[tuple[np.ndarray, int, asyncio.Future[list[tuple[int, float]]]]] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None

    async def search(self, query: str, top_k: int) -> list[Hit]:
        """Best chunk of each of the `top_k` best documents, best first."""
        n_chunks = len(self.index.chunks)
        fetch = min(n_chunks, top_k * OVERFETCH)
        if fetch == 0:
            return []
        if self.mode is SearchMode.DENSE:
            ranked = await self._dense(query, fetch)
        elif self.mode is SearchMode.LEXICAL:
            ranked = self._lexical(query, fetch)
        else:
            ranked = _fuse([await self._dense(query, fetch), self._lexical(query, fetch)])
        return self._best_per_document(ranked, top_k, query)

    async def _dense(self, query: str, k: int) -> list[tuple[int, float]]:
        assert self.encoder is not None
        vector = await self.encoder.encode(query)  # (dim,)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[tuple[int, float]]] = loop.create_future()
        self._pending.append((vector, k, future))
        if self._flush_on is not loop:
            # Runs after the callbacks already queued, e.g. the rest of this encoder batch.
            self._flush_on = loop
            loop.call_soon(self._flush_dense, loop)
        return await future

    def _flush_dense(self, loop: asyncio.AbstractEventLoop) -> None:
        # Searches left behind by an event loop that has since gone are dropped.
        pending = [p for p in self._pending if p[2].get_loop() is loop]
        self._pending, self._flush_on = [], None
        if not pending:
            return
        assert self.index.dense is not None
        try:
            vectors = np.stack([vector for vector, _, _ in pending])  # (n, dim)
            k_max = max(k for _, k, _ in pending)
            # One thread: this is the event loop's thread, and the encoder threads hold the
            # other cores (FAISS's OpenMP team would wait on them). Per-thread setting.
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                scores, ids = self.index.dense.search(vectors, k_max)  # (n, k_max) each
            finally:
                faiss.omp_set_num_threads(threads)
        except Exception as exc:
            for _, _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        for row, (_, k, future) in enumerate(pending):
            if not future.done():  # a cancelled request leaves its future done
                future.set_result(
                    [
                        (int(i), float(s))
                        for i, s in zip(ids[row, :k], scores[row, :k], strict=True)
                        if i >= 0
                    ]
                )

    def _lexical(self, query: str, k: int) -> list[tuple[int, float]]:
        from toolservers.index import lexical_tokens

        tokenized = lexical_tokens([query])
        retriever = self.index.lexical
        vocab: dict[str, int] = retriever.vocab_dict  # type: ignore[attr-defined]
        words = [w for w in tokenized.vocab if w in vocab]  # type: ignore[attr-defined]
        if not words:
            return []
        scores = retriever.get_scores(words)  # type: ignore[attr-defined]  # (n_chunks,)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]

    def _best_per_document(
        self, ranked: list[tuple[int, float]], top_k: int, query: str
    ) -> list[Hit]:
        """The `top_k` best documents, ranked by their best chunk; each shown by the chunk
        of it whose line best matches the query (toolservers.snippets)."""
        hits: list[Hit] = []
        seen: set[str] = set()
        for chunk_id, score in ranked:
            chunk = self.index.chunks[chunk_id]
            if chunk.path not in seen:
                seen.add(chunk.path)
                hits.append(Hit(chunk=self.snippet_chunks.choose(chunk, query), score=score))
                if len(hits) == top_k:
                    break
        return hits


def _fuse(rankings: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: a chunk's score is the sum of 1/(RRF_K + rank) over rankings."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (chunk_id, _) in enumerate(ranking):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))
