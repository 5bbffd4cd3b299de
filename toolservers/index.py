"""Build, save and load the search index of a corpus.

On disk (default `<corpus>/index/`):
    manifest.json   what was built from what: model, dimension, chunking, corpus fingerprint
    chunks.jsonl    one chunk per line, row i = FAISS id i = BM25 document i
    dense.faiss     normalised embeddings (exact inner product, or HNSW for large corpora)
    lexical/        BM25 model (bm25s)

A server refuses an index whose manifest does not match the corpus or model in front of it,
and says which command rebuilds it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import faiss
import numpy as np
from pydantic import BaseModel, ValidationError
from tqdm import tqdm

from toolservers.chunking import Chunk, ChunkingConfig, chunk_document
from toolservers.corpus import Corpus
from toolservers.embedding import Embedder
from toolservers.errors import IndexUnusableError, StaleIndexError

INDEX_FORMAT = 1
# Above this many chunks an exact scan costs more than HNSW's small recall loss.
HNSW_THRESHOLD = 200_000


class SearchMode(StrEnum):
    DENSE = "dense"
    LEXICAL = "lexical"
    HYBRID = "hybrid"

    @property
    def uses_dense(self) -> bool:
        return self is not SearchMode.LEXICAL

    @property
    def uses_lexical(self) -> bool:
        return self is not SearchMode.DENSE


class Manifest(BaseModel, frozen=True):
    format: int = INDEX_FORMAT
    search: SearchMode
    embedding_model: str | None
    dimension: int | None
    faiss_index: str | None  # "flat" or "hnsw"
    chunking: ChunkingConfig
    corpus_fingerprint: str
    documents: int
    chunks: int
    built_at: float


@dataclass
class LoadedIndex:
    manifest: Manifest
    chunks: list[Chunk]
    dense: faiss.Index | None
    lexical: object | None  # bm25s.BM25


def default_index_dir(corpus_dir: Path) -> Path:
    return corpus_dir / "index"


def rebuild_hint(corpus_dir: Path, manifest: Manifest | None = None) -> str:
    model = (
        f" --embedding-model {manifest.embedding_model}"
        if manifest and manifest.embedding_model
        else ""
    )
    search = f" --search {manifest.search}" if manifest else ""
    return f"Rebuild it with: toolgym index build --corpus {corpus_dir}{model}{search}"


def _faiss_index(vectors: np.ndarray, kind: str) -> faiss.Index:
    dim = vectors.shape[1]
    index: faiss.Index
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = 128
        index = hnsw
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vectors)  # (n_chunks, dim) float32, rows L2-normalised
    return index


def lexical_tokens(texts: list[str]) -> object:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", show_progress=False)


def build_index(
    corpus_dir: Path,
    *,
    search: SearchMode = SearchMode.DENSE,
    embedding_model: str | None = None,
    index_dir: Path | None = None,
    chunking: ChunkingConfig | None = None,
    faiss_index: str = "auto",
    progress: bool = True,
) -> Manifest:
    """Chunk, embed and write an index; the manifest is written last, so a crash leaves none."""
    from toolservers.embedding import DEFAULT_EMBEDDING_MODEL

    chunking = chunking or ChunkingConfig()
    corpus = Corpus(corpus_dir)
    if len(corpus) == 0:
        raise IndexUnusableError(f"corpus {corpus_dir} holds no documents to index")
    chunks = [
        chunk
        for path in tqdm(corpus.paths, desc="chunking", unit="doc", disable=not progress)
        for chunk in chunk_document(path, corpus.text(path), chunking)
    ]
    out = index_dir or default_index_dir(corpus_dir)
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    texts = [c.embedding_text() for c in chunks]
    model_name = dimension = kind = None
    if search.uses_dense:
        model_name = embedding_model or DEFAULT_EMBEDDING_MODEL
        if Path(model_name).expanduser().is_dir():  # a local model: valid from any cwd
            model_name = str(Path(model_name).expanduser().resolve())
        embedder = Embedder(model_name)
        vectors = embedder.encode(texts, progress=progress)  # (n_chunks, dim)
        dimension = embedder.dimension
        kind = (
            faiss_index
            if faiss_index != "auto"
            else ("hnsw" if len(chunks) > HNSW_THRESHOLD else "flat")
        )
        faiss.write_index(_faiss_index(vectors, kind), str(staging / "dense.faiss"))
    if search.uses_lexical:
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(lexical_tokens(texts), show_progress=progress)
        retriever.save(str(staging / "lexical"))
    with (staging / "chunks.jsonl").open("w", encoding="utf-8") as fh:
        for chunk in chunks:
            fh.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
    manifest = Manifest(
        search=search,
        embedding_model=model_name,
        dimension=dimension,
        faiss_index=kind,
        chunking=chunking,
        corpus_fingerprint=corpus.fingerprint(),
        documents=len(corpus),
        chunks=len(chunks),
        built_at=time.time(),
    )
    (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return manifest


def read_manifest(corpus_dir: Path, index_dir: Path | None = None) -> Manifest:
    path = (index_dir or default_index_dir(corpus_dir)) / "manifest.json"
    if not path.is_file():
        raise IndexUnusableError(f"no search index at {path.parent}. {rebuild_hint(corpus_dir)}")
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise IndexUnusableError(
            f"index manifest {path} is unreadable ({exc.error_count()} problems). "
            + rebuild_hint(corpus_dir)
        ) from exc
    if manifest.format != INDEX_FORMAT:
        raise IndexUnusableError(
            f"index at {path.parent} has format {manifest.format}, this toolgym reads "
            f"{INDEX_FORMAT}. {rebuild_hint(corpus_dir, manifest)}"
        )
    return manifest


def load_index(
    corpus: Corpus,
    *,
    index_dir: Path | None = None,
    expect_model: str | None = None,
    expect_dimension: int | None = None,
) -> LoadedIndex:
    """Open an index and check it still describes `corpus` (and the given model)."""
    index_dir = index_dir or default_index_dir(corpus.root)
    manifest = read_manifest(corpus.root, index_dir)
    hint = rebuild_hint(corpus.root, manifest)
    if manifest.corpus_fingerprint != corpus.fingerprint():
        raise StaleIndexError(
            f"the index at {index_dir} was built from a different version of {corpus.root} "
            f"(documents changed since). {hint}"
        )
    if expect_model is not None and manifest.embedding_model not in (None, expect_model):
        raise IndexUnusableError(
            f"the index was built with embedding model {manifest.embedding_model!r}, "
            f"not {expect_model!r}. Serve with --embedding-model {manifest.embedding_model} "
            f"or rebuild: toolgym index build --corpus {corpus.root} "
            f"--embedding-model {expect_model}"
        )
    if expect_dimension is not None and manifest.dimension not in (None, expect_dimension):
        raise IndexUnusableError(
            f"the index holds {manifest.dimension}-dimensional vectors but the embedding model "
            f"gives {expect_dimension}. {hint}"
        )
    with (index_dir / "chunks.jsonl").open(encoding="utf-8") as fh:
        chunks = [Chunk(**json.loads(line)) for line in fh]
    dense = lexical = None
    if manifest.search.uses_dense:
        dense = faiss.read_index(str(index_dir / "dense.faiss"))
    if manifest.search.uses_lexical:
        import bm25s

        lexical = bm25s.BM25.load(str(index_dir / "lexical"))
    counts = {len(chunks), manifest.chunks}
    if dense is not None:
        counts.add(int(dense.ntotal))
    if len(counts) != 1:
        raise IndexUnusableError(f"index files at {index_dir} disagree on the chunk count. {hint}")
    return LoadedIndex(manifest=manifest, chunks=chunks, dense=dense, lexical=lexical)
