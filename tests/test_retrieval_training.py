"""A local embedding model trained on the corpus's own questions retrieves the evidence."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from test_search import searcher_for

from envs.data.build import build_dataset
from toolservers.errors import ToolServerError
from toolservers.index import SearchMode, build_index
from toolservers.retrieval_training import read_questions, train_retrieval_model


@pytest.mark.slow
def test_training_lifts_dense_recall_above_0_9(
    corpus_dir: Path, embedding_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    build_dataset(corpus_dir, data, seed=0)
    out = tmp_path / "trained"
    report = train_retrieval_model(
        corpus_dir, embedding_model, data / "train.jsonl", out, val_rows=data / "val.jsonl"
    )
    assert report.pairs > 500
    assert report.recall_after >= 0.9 > report.recall_before

    # The trained model through the real index and searcher, on questions it never saw.
    index_dir = tmp_path / "index"
    build_index(corpus_dir, search=SearchMode.DENSE, embedding_model=str(out),
                index_dir=index_dir, progress=False)  # fmt: skip
    searcher = searcher_for(corpus_dir, out, index_dir)
    questions = read_questions(data / "val.jsonl")[:40]

    async def found() -> float:
        hits = 0
        for question in questions:
            paths = [h.chunk.path for h in await searcher.search(question.text, 5)]
            hits += bool(set(question.documents) & set(paths))
        return hits / len(questions)

    assert asyncio.run(found()) >= 0.85


def test_rows_that_are_not_rows_are_refused_with_their_line(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    good = {"prompt": "q", "expected": {"evidence_path": "filings/a.html"}}
    rows.write_text(json.dumps(good) + "\n[1, 2]\n")
    with pytest.raises(ToolServerError, match=r"rows\.jsonl:2"):
        read_questions(rows)
