"""The demo's data: corpus, questions, the rows a tiny policy can learn, the search index.

Each step calls the library function behind a `toolgym` verb and keeps what it returns; it
first prints that verb (`show_command`), so a user can repeat the step by hand.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from envs.data.build import build_dataset
from envs.data.metrics import METRICS
from envs.data.recipe import Recipe
from envs.data.rows import Row, load_rows, write_rows
from toolservers.chunking import ChunkingConfig
from toolservers.index import SearchMode, build_index
from toolservers.local_model import build_static_model
from toolservers.retrieval_training import TrainingReport, train_retrieval_model
from toolservers.synth import synthesize_corpus

# Short chunks: a search hit's best chunk is then the few table rows that hold the figure.
CHUNK_CHARS, CHUNK_OVERLAP = 300, 100
TRAINING_REPORT = "training-report.json"  # what `toolgym index train-model` writes, too


def show_command(*argv: str | Path | float) -> list[str]:
    """Print the `toolgym` command that does what the demo is about to do; returns its words."""
    words = [str(a) for a in argv]
    print(f"$ toolgym {shlex.join(words)}", flush=True)
    return words


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


def prepare_data(work: Path, seed: int, lookup_rows: int) -> DemoData:
    corpus, data = work / "corpus", work / "data"
    if not (corpus / "facts.jsonl").is_file():
        show_command("corpus", "synth", "--out", corpus, "--seed", seed)
        print(f"wrote {corpus}: {synthesize_corpus(corpus, seed=seed)}")
    else:
        print(f"corpus: reusing {corpus}")
    if not (data / "val.jsonl").is_file():
        show_command("data", "build", "--corpus", corpus, "--out", data, "--seed", seed)
        print(build_dataset(corpus, data, seed=seed).render())
    lookups = data / "lookups"
    if not (lookups / "val.jsonl").is_file():
        show_command("data", "build", "--corpus", corpus, "--out", lookups, "--seed", seed,
                     "--count", f"lookup={lookup_rows}")  # fmt: skip
        print(build_dataset(corpus, lookups, seed=seed, counts={"lookup": lookup_rows}).render())
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


def prepare_search(work: Path, data: DemoData) -> float:
    """Train the embedding model on the corpus's own question/passage pairs; index with it.
    Returns the trained model's recall@5 of the evidence document on the val questions."""
    model = work / "embedding-model"
    report = _train_embedding_model(data, model)
    print(f"recall@{report.k} of the evidence document on the val questions: "
          f"{report.recall_after:.2f}")  # fmt: skip
    show_command("index", "build", "--corpus", data.corpus, "--search", "hybrid",
                 "--embedding-model", model, "--chunk-chars", CHUNK_CHARS,
                 "--chunk-overlap", CHUNK_OVERLAP)  # fmt: skip
    manifest = build_index(
        data.corpus,
        search=SearchMode.HYBRID,
        embedding_model=str(model),
        chunking=ChunkingConfig(max_chars=CHUNK_CHARS, overlap_chars=CHUNK_OVERLAP),
    )
    print(f"indexed {manifest.documents} documents as {manifest.chunks} chunks "
          f"(search={manifest.search}, faiss={manifest.faiss_index})")  # fmt: skip
    return report.recall_after


def _train_embedding_model(data: DemoData, model: Path) -> TrainingReport:
    """A fresh static model fine-tuned on the train questions, as `index train-model` makes it;
    an earlier run's model is reused (its report says it was finished)."""
    report_file = model / TRAINING_REPORT
    if report_file.is_file():
        print(f"embedding model: reusing {model}")
        return TrainingReport(**json.loads(report_file.read_text()))
    show_command("index", "train-model", "--corpus", data.corpus, "--train-rows",
                 data.all_train, "--val-rows", data.all_val, "--out", model)  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        base = build_static_model(data.corpus, Path(scratch) / "base")
        report = train_retrieval_model(
            data.corpus, base, data.all_train, model, val_rows=data.all_val
        )
    report_file.write_text(json.dumps(dataclasses.asdict(report)) + "\n")
    return report
