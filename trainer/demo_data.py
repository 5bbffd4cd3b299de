"""The demo's data: corpus, questions, the rows a tiny policy can learn, the search index."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envs.data.metrics import METRICS
from envs.data.recipe import Recipe
from envs.data.rows import Row, load_rows, write_rows

Toolgym = Callable[..., int]  # `toolgym <verb> ...` in this process, raising on failure
# Short chunks: a search hit's best chunk is then the few table rows that hold the figure.
CHUNK_CHARS, CHUNK_OVERLAP = 300, 100


@dataclass(frozen=True)
class DemoData:
    corpus: Path
    all_train: Path  # the standard question mix: trains the embedding model, reports recall
    all_val: Path
    train: Path  # the demo's rows
    val: Path


def is_quarterly_statement_lookup(row: Row) -> bool:
    """One figure of a 10-Q's statement of operations: a search result can state it.

    These are the rows a policy trained from scratch on a CPU in minutes can learn; the
    same pipeline takes every row type with a real model (README, "Training on a GPU")."""
    raw = row.metadata.extra("recipe")
    if raw is None:
        return False
    recipe = Recipe.model_validate(raw)
    if recipe.op != "lookup" or len(recipe.facts) != 1:
        return False
    fact = recipe.facts[0]
    return "-Q" in fact.period and METRICS[fact.metric].kind == "flow"


def _select(source: Path, out: Path) -> int:
    """The demo's rows; answered from the search results, they must use `search` (not `read`)."""
    rows = [
        row.model_copy(
            update={"expected": row.expected.model_copy(update={"must_use_tools": ["search"]})}
        )
        for row in load_rows(source)
        if is_quarterly_statement_lookup(row)
    ]
    write_rows(out, rows)
    return len(rows)


def prepare_data(work: Path, seed: int, lookup_rows: int, toolgym: Toolgym) -> DemoData:
    corpus, data = work / "corpus", work / "data"
    if not (corpus / "facts.jsonl").is_file():
        toolgym("corpus", "synth", "--out", corpus, "--seed", seed)
    else:
        print(f"corpus: reusing {corpus}")
    if not (data / "val.jsonl").is_file():
        toolgym("data", "build", "--corpus", corpus, "--out", data, "--seed", seed)
    lookups = data / "lookups"
    if not (lookups / "val.jsonl").is_file():
        toolgym("data", "build", "--corpus", corpus, "--out", lookups, "--seed", seed,
                "--count", f"lookup={lookup_rows}")  # fmt: skip
    result = DemoData(
        corpus, data / "train.jsonl", data / "val.jsonl", data / "demo-train.jsonl",
        data / "demo-val.jsonl",
    )  # fmt: skip
    kept = [
        _select(lookups / "train.jsonl", result.train),
        _select(lookups / "val.jsonl", result.val),
    ]
    print(
        f"demo rows (quarterly statement-of-operations lookups): {kept[0]} train -> "
        f"{result.train}, {kept[1]} val -> {result.val}"
    )
    return result


def prepare_search(work: Path, data: DemoData, toolgym: Toolgym) -> float:
    """Train the embedding model on the corpus's own question/passage pairs; index with it."""
    model = work / "embedding-model"
    report = model / "training-report.json"
    if not report.is_file():
        toolgym("index", "train-model", "--corpus", data.corpus, "--train-rows",
                data.all_train, "--val-rows", data.all_val, "--out", model)  # fmt: skip
    recall = float(json.loads(report.read_text())["recall_after"])
    print(f"recall@5 of the evidence document on the val questions: {recall:.2f}")
    toolgym("index", "build", "--corpus", data.corpus, "--search", "hybrid",
            "--embedding-model", model, "--chunk-chars", CHUNK_CHARS,
            "--chunk-overlap", CHUNK_OVERLAP)  # fmt: skip
    return recall
