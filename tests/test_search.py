"""Index build and search: the right document comes back, and bad indexes are refused."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest

from toolservers.chunking import Chunk, ChunkingConfig, chunk_document
from toolservers.corpus import Corpus
from toolservers.embedding import Embedder, QueryEncoder
from toolservers.errors import IndexUnusableError, StaleIndexError
from toolservers.index import SearchMode, build_index, load_index, read_manifest
from toolservers.search import Searcher
from toolservers.snippets import SnippetChunks, snippet
from toolservers.synth import Fact, load_facts

METRIC_WORDS = {
    "revenue": "revenue",
    "operating_margin": "operating margin",
    "net_income": "net income",
    "gross_profit": "gross profit",
    "eps_diluted": "diluted earnings per share",
    "total_assets": "total assets",
}


def question(fact: Fact) -> str:
    """How a user would ask for the fact: company, period, metric."""
    if fact.form == "10-K":
        period = f"fiscal year {fact.fiscal_year} annual report"
    else:
        quarter = fact.period.split("-")[1]
        period = f"{quarter} {fact.fiscal_year} quarterly report"
    return f"{fact.company} {period} {METRIC_WORDS[fact.metric]}"


def sample_facts(corpus_dir: Path, n: int, seed: int = 1) -> list[Fact]:
    facts = [f for f in load_facts(corpus_dir / "facts.jsonl") if f.metric in METRIC_WORDS]
    return random.Random(seed).sample(facts, n)


def recall_at(searcher: Searcher, facts: list[Fact], k: int) -> float:
    async def run() -> float:
        found = 0
        for fact in facts:
            hits = await searcher.search(question(fact), k)
            found += fact.path in [h.chunk.path for h in hits]
        return found / len(facts)

    return asyncio.run(run())


def searcher_for(corpus_dir: Path, embedding_model: Path | None, index_dir: Path) -> Searcher:
    corpus = Corpus(corpus_dir)
    index = load_index(corpus, index_dir=index_dir)
    encoder = QueryEncoder(Embedder(str(embedding_model))) if embedding_model else None
    return Searcher(index, encoder)


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_search_finds_the_document_that_states_the_fact(
    mode: str, corpus_dir: Path, embedding_model: Path, hybrid_index: Path, tmp_path: Path
) -> None:
    if mode == "hybrid":
        index_dir = hybrid_index
    else:
        index_dir = tmp_path / mode
        build_index(
            corpus_dir,
            search=SearchMode(mode),
            embedding_model=str(embedding_model),
            index_dir=index_dir,
            progress=False,
        )
    model = None if mode == "lexical" else embedding_model
    recall = recall_at(searcher_for(corpus_dir, model, index_dir), sample_facts(corpus_dir, 60), 5)
    print(f"{mode}: recall@5 = {recall:.2f}")
    assert recall >= 0.8


def test_manifest_records_what_was_built(corpus_dir: Path, hybrid_index: Path) -> None:
    manifest = read_manifest(corpus_dir)
    assert manifest.search is SearchMode.HYBRID
    assert manifest.dimension == 128
    assert manifest.faiss_index == "flat"
    assert manifest.documents == len(Corpus(corpus_dir))
    assert manifest.chunks > manifest.documents  # documents are cut into several chunks
    chunks = (hybrid_index / "chunks.jsonl").read_text().splitlines()
    assert len(chunks) == manifest.chunks
    first = json.loads(chunks[0])
    text = Corpus(corpus_dir).text(first["path"])
    assert text[first["offset"] : first["offset"] + len(first["text"])] == first["text"]


def test_hnsw_index_retrieves_like_the_exact_one(
    corpus_dir: Path, embedding_model: Path, tmp_path: Path
) -> None:
    recalls = {}
    facts = sample_facts(corpus_dir, 60)
    for kind in ("flat", "hnsw"):
        build_index(
            corpus_dir,
            search=SearchMode.DENSE,
            embedding_model=str(embedding_model),
            index_dir=tmp_path / kind,
            faiss_index=kind,
            progress=False,
        )
        assert read_manifest(corpus_dir, tmp_path / kind).faiss_index == kind
        searcher = searcher_for(corpus_dir, embedding_model, tmp_path / kind)
        recalls[kind] = recall_at(searcher, facts, 5)
    print(f"recall@5 on {len(facts)} facts: {recalls}")
    assert recalls["hnsw"] >= recalls["flat"] - 0.05  # approximate, not worse by much
    assert recalls["hnsw"] >= 0.75


def test_changed_corpus_makes_the_index_stale(small_corpus: Path, embedding_model: Path) -> None:
    build_index(small_corpus, search=SearchMode.LEXICAL, progress=False)
    load_index(Corpus(small_corpus))  # current: loads
    victim = sorted((small_corpus / "filings").iterdir())[0]
    victim.write_text(victim.read_text().replace("Revenue", "Turnover", 1))
    with pytest.raises(StaleIndexError, match="toolgym index build --corpus"):
        load_index(Corpus(small_corpus))


def test_index_for_another_model_is_refused(small_corpus: Path, embedding_model: Path) -> None:
    build_index(
        small_corpus, search=SearchMode.DENSE, embedding_model=str(embedding_model), progress=False
    )
    corpus = Corpus(small_corpus)
    with pytest.raises(IndexUnusableError, match="built with embedding model"):
        load_index(corpus, expect_model="sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(IndexUnusableError, match=r"384-dimensional|128-dimensional"):
        load_index(corpus, expect_dimension=384)


def test_missing_or_corrupt_index_says_how_to_rebuild(small_corpus: Path) -> None:
    with pytest.raises(IndexUnusableError, match="Rebuild it with: toolgym index build"):
        load_index(Corpus(small_corpus))
    (small_corpus / "index").mkdir()
    (small_corpus / "index" / "manifest.json").write_text("{not json")
    with pytest.raises(IndexUnusableError, match="unreadable"):
        load_index(Corpus(small_corpus))


def test_query_encoder_batches_concurrent_queries_and_caches(embedding_model: Path) -> None:
    embedder = Embedder(str(embedding_model))
    batches: list[int] = []
    original = embedder.encode

    def counting(texts: list[str], **kwargs: object) -> object:
        batches.append(len(texts))
        return original(texts)

    embedder.encode = counting  # type: ignore[method-assign,assignment]
    encoder = QueryEncoder(embedder, max_batch=64)

    async def run() -> None:
        queries = [f"revenue of company {i}" for i in range(40)]
        vectors = await asyncio.gather(*(encoder.encode(q) for q in queries))
        direct = original(queries)
        for got, want in zip(vectors, direct, strict=True):
            assert abs(float(got @ want) - 1.0) < 1e-5
        await encoder.encode(queries[3])  # cached: no new batch

    asyncio.run(run())
    assert sum(batches) == 40
    assert len(batches) < 40  # coalesced, not one call per query


def test_snippet_starts_at_the_line_the_query_asks_about() -> None:
    text = (
        "Revenue is recognised when goods ship.\n"
        "Consolidated statements of operations, three months ended March 31, 2024\n"
        "Line item        | Q1 2024 | Q1 2023\n"
        "Revenue          | 1,045.5 | 1,079.9\n"
        "Operating income |   118.9 |    68.9\n"
        "Net income       |    83.6 |    41.5\n"
    )
    title = "Acme - Form 10-Q: Quarterly report for the quarter ended March 31, 2024"
    chunk = Chunk(path="filings/acme.html", offset=400, text=text, title=title)
    found = snippet(chunk, "Acme operating income three months ended March 31, 2024")
    assert found.startswith("...Operating income | 118.9 | 68.9 Net income")
    # words of the title match every line and do not count; no match: from the start
    assert snippet(chunk, "Acme Form").startswith("Revenue is recognised")
    # between lines sharing as many words, the one with fewer other words (the table row) wins
    assert snippet(chunk, "Acme revenue").startswith("...Revenue | 1,045.5")


def _reference_snippet(chunk: Chunk, query: str, width: int = 240) -> str:
    """Snippet selection as first written (every line split into words on every call):
    the cached version must pick the same excerpt."""
    words_re = re.compile(r"\w+")
    title = {w.lower() for w in words_re.findall(chunk.title)}
    words = {w.lower() for w in words_re.findall(query) if len(w) > 2} - title
    best, best_key, position = 0, (0, 0.0), 0
    for line in chunk.text.splitlines(keepends=True):
        line_words = {w.lower() for w in words_re.findall(line) if not w.isdigit()}
        shared = len(words & line_words)
        key = (shared, shared / max(len(line_words), 1))
        if shared and key > best_key:
            best, best_key = position, key
        position += len(line)
    start = len(" ".join(chunk.text[:best].split()))
    flat = " ".join(chunk.text.split())
    start = start + 1 if start else 0
    excerpt = flat[start : start + width]
    return ("..." if start > 0 else "") + excerpt + ("..." if start + width < len(flat) else "")


def test_cached_snippet_selection_picks_what_the_line_scan_did(corpus_dir: Path) -> None:
    rng = random.Random(7)
    corpus = Corpus(corpus_dir)
    config = ChunkingConfig()
    chunks = [c for p in corpus.paths for c in chunk_document(p, corpus.text(p), config)]
    vocabulary = sorted({w for c in chunks[:200] for w in re.findall(r"\w+", c.text)})
    # Awkward texts too: blank and whitespace-only lines, \r\n, tabs, repeated lines.
    odd = [
        "\n\n  \nRevenue | 10\r\nRevenue | 10\n\tNet income\t| 3\n",
        "   leading spaces\n\n\nOperating income |  1.0  \n \n",
        "one line, no newline",
        "",
    ]
    chunks += [Chunk(path="x.html", offset=0, text=t, title="Acme 10-K") for t in odd]
    for chunk in rng.sample(chunks, 300) + chunks[-len(odd) :]:
        own = re.findall(r"\w+", chunk.text) or ["revenue"]
        for _ in range(4):
            words = rng.sample(own, min(3, len(own))) + rng.sample(vocabulary, 2)
            query = " ".join(w.upper() if rng.random() < 0.2 else w for w in words)
            assert snippet(chunk, query) == _reference_snippet(chunk, query), (chunk, query)


def test_a_hit_is_shown_by_the_chunk_that_states_the_figure(
    corpus_dir: Path, embedding_model: Path, hybrid_index: Path
) -> None:
    """The chunk that ranks a filing is often its narrative; the figure asked about sits in a
    table row of another chunk. The hit's excerpt must come from that one."""
    searcher = searcher_for(corpus_dir, embedding_model, hybrid_index)
    facts = sample_facts(corpus_dir, 80, seed=3)

    def stated_share() -> tuple[float, int]:
        async def run() -> tuple[float, int]:
            stated = right_document = 0
            for fact in facts:
                query = question(fact)
                (hit,) = await searcher.search(query, 1)
                if hit.chunk.path == fact.path:
                    right_document += 1
                    stated += fact.display in snippet(hit.chunk, query)
            return stated / max(right_document, 1), right_document

        return asyncio.run(run())

    chosen, documents = stated_share()
    searcher.snippet_chunks.choose = lambda ranked, query: ranked  # type: ignore[method-assign]
    ranked_only, same_documents = stated_share()
    print(f"excerpt states the figure: {chosen:.2f} (ranked chunk alone {ranked_only:.2f})")
    assert documents == same_documents >= 40  # the ranking itself is unchanged
    assert chosen >= 0.85
    assert chosen > ranked_only


def test_the_chunk_choice_keeps_the_ranked_chunk_on_a_tie() -> None:
    title = "Acme Corp - Form 10-Q: quarter ended March 31, 2025"
    narrative = Chunk("a.html", 0, "Acme grew revenue in the quarter.\nMore text here.", title)
    table = Chunk("a.html", 40, "Line item | Q1 2025\nRevenue | 10.0\nNet income | 2.0", title)
    other = Chunk("b.html", 0, "Net income | 9.9", title)
    chooser = SnippetChunks([narrative, table, other])
    assert chooser.choose(narrative, "Acme net income") is table  # only the table has it
    assert chooser.choose(narrative, "Acme revenue") is table  # a row beats a sentence
    assert chooser.choose(table, "Acme revenue") is table
    assert chooser.choose(narrative, "Acme cash flow") is narrative  # nothing better: keep it
    assert chooser.choose(other, "net income") is other  # never another document's chunk
