"""Open a corpus and its index into a ready `Toolbox` (what both servers serve)."""

from __future__ import annotations

from pathlib import Path

from toolservers.corpus import Corpus
from toolservers.embedding import Embedder, QueryEncoder
from toolservers.index import load_index, read_manifest
from toolservers.search import Searcher
from toolservers.tools import Toolbox, ToolLimits


def open_toolbox(
    corpus_dir: Path,
    *,
    index_dir: Path | None = None,
    embedding_model: str | None = None,
    limits: ToolLimits | None = None,
) -> Toolbox:
    """Load everything up front, so a bad index fails at start-up, not on the first call."""
    corpus = Corpus(corpus_dir)
    manifest = read_manifest(corpus.root, index_dir)
    encoder = None
    dimension = None
    if manifest.search.uses_dense:
        assert manifest.embedding_model is not None
        embedder = Embedder(embedding_model or manifest.embedding_model)
        encoder = QueryEncoder(embedder)
        dimension = embedder.dimension
    index = load_index(
        corpus, index_dir=index_dir, expect_model=embedding_model, expect_dimension=dimension
    )
    return Toolbox(corpus, Searcher(index, encoder), limits)
