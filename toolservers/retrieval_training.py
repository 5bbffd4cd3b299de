"""Teach a local embedding model to retrieve on this corpus, from the corpus's own questions.

The untrained IDF static model finds documents that share rare words with the question; it
does not know that "combined operating income for the first three quarters" points at the
10-Qs' income statements. Contrastive training on (question, evidence passage) pairs does:
for each training question, the positive is the chunk of its evidence document that shares
the most words with it, and the other pairs of the batch are the negatives
(MultipleNegativesRankingLoss). A static model trains in seconds on CPU.

Questions come as dataset rows (JSONL with `prompt` and `expected.evidence_path`): read here as
plain JSON, the wire format, so this package still imports none of the others.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolservers.chunking import ChunkingConfig, chunk_document
from toolservers.corpus import Corpus
from toolservers.errors import ToolServerError

_WORD = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*")


@dataclass(frozen=True)
class Question:
    text: str
    documents: tuple[str, ...]  # evidence paths


def read_questions(rows_file: Path) -> list[Question]:
    """Questions with evidence documents from a dataset JSONL file; rows without are skipped."""
    questions = []
    for number, line in enumerate(rows_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            evidence = (row.get("expected") or {}).get("evidence_path")
            prompt = row["prompt"]
        except (ValueError, KeyError, AttributeError) as exc:
            raise ToolServerError(f"{rows_file}:{number}: not a dataset row ({exc})") from None
        paths = [evidence] if isinstance(evidence, str) else list(evidence or [])
        if paths:
            questions.append(Question(str(prompt), tuple(paths)))
    return questions


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


class ChunkTable:
    """Every chunk's embedding text, with the document it came from."""

    def __init__(self, corpus_dir: Path) -> None:
        corpus = Corpus(corpus_dir)
        config = ChunkingConfig()
        self.paths: list[str] = []
        self.texts: list[str] = []
        self.by_document: dict[str, list[str]] = defaultdict(list)
        for path in corpus.paths:
            for chunk in chunk_document(path, corpus.text(path), config):
                self.paths.append(path)
                self.texts.append(chunk.embedding_text())
                self.by_document[path].append(chunk.embedding_text())

    def best_passage(self, question: Question) -> list[str]:
        """For each evidence document, its chunk sharing the most words with the question."""
        wanted = _words(question.text)
        return [
            max(self.by_document[path], key=lambda text: len(wanted & _words(text)))
            for path in question.documents
            if self.by_document.get(path)
        ]


def document_recall(model: object, table: ChunkTable, questions: list[Question], k: int) -> float:
    """Share of questions with an evidence document among the top-k distinct documents."""
    chunks = model.encode(table.texts, batch_size=256, normalize_embeddings=True)  # type: ignore[attr-defined]
    queries = model.encode([q.text for q in questions], normalize_embeddings=True)  # type: ignore[attr-defined]
    scores = np.asarray(queries) @ np.asarray(chunks).T  # (questions, chunks)
    found = 0
    for row, question in zip(scores, questions, strict=True):
        documents: list[str] = []
        for index in np.argsort(-row):
            if table.paths[index] not in documents:
                documents.append(table.paths[index])
                if len(documents) == k:
                    break
        found += bool(set(question.documents) & set(documents))
    return found / max(len(questions), 1)


@dataclass(frozen=True)
class TrainingReport:
    pairs: int
    recall_before: float
    recall_after: float
    k: int


def train_retrieval_model(
    corpus_dir: Path,
    base_model: Path,
    train_rows: Path,
    out_dir: Path,
    *,
    val_rows: Path | None = None,
    epochs: int = 3,
    learning_rate: float = 0.05,
    batch_size: int = 64,
    k: int = 5,
    seed: int = 0,
) -> TrainingReport:
    """Fine-tune `base_model` (e.g. from `build_static_model`) and save it to `out_dir`."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    table = ChunkTable(corpus_dir)
    questions = read_questions(train_rows)
    pairs = [(q.text, passage) for q in questions for passage in table.best_passage(q)]
    if not pairs:
        raise ToolServerError(f"{train_rows}: no rows with evidence documents in this corpus")
    held_out = read_questions(val_rows) if val_rows else []
    model = SentenceTransformer(str(base_model), device="cpu", local_files_only=True)
    before = document_recall(model, table, held_out, k) if held_out else float("nan")
    data = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    scratch = tempfile.mkdtemp(prefix="toolgym-embedding-")  # the trainer wants a directory
    args = SentenceTransformerTrainingArguments(
        output_dir=scratch,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        save_strategy="no",
        report_to=[],
        seed=seed,
        batch_sampler="no_duplicates",  # a duplicate positive would be its own false negative
        disable_tqdm=False,
    )
    loss = MultipleNegativesRankingLoss(model)
    try:
        SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model.save(str(out_dir))
    after = document_recall(model, table, held_out, k) if held_out else float("nan")
    return TrainingReport(pairs=len(pairs), recall_before=before, recall_after=after, k=k)
