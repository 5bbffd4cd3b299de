"""Build the filings QA dataset (train.jsonl / val.jsonl) from a synthetic corpus's facts.

Difficulty follows how much work the answer takes: easy = one stated figure in one document
(lookup); medium = a ratio or growth rate computed from stated figures; hard = comparisons,
aggregates and differences across documents or companies. Every reference is computed from
facts.jsonl with `envs.data.recipe.compute`, and the recipe is kept in ``metadata["recipe"]``
so a scripted oracle can recompute it from the documents' text (`envs.data.oracle`).
The split is stratified by (task_type, difficulty) and everything is a function of the seed.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from envs.data.facts import FactTable, load_fact_lines
from envs.data.recipe import Answer, RecipeError, compute
from envs.data.report import SplitCounts, count_rows, render_counts
from envs.data.rows import DatasetError, Expected, Row, RowMetadata, write_rows
from envs.data.tasks import GENERATORS, Draft

__all__ = ["DEFAULT_COUNTS", "BuildSummary", "build_command", "build_dataset", "split_rows"]

DEFAULT_COUNTS: dict[str, int] = {
    "lookup": 300,
    "ratio": 150,
    "growth": 150,
    "comparison": 100,
    "aggregate": 100,
    "difference": 100,
}
MUST_USE_TOOLS = ["search", "read"]
# A derived answer whose rounding slack needs more than this relative tolerance is too close
# to zero to grade fairly; such candidates are dropped rather than graded loosely.
MAX_TOLERANCE = 0.05
EXACT_TOLERANCE = 0.001  # stated figures and their sums: only formatting may differ


class BuildSummary(BaseModel):
    corpus_dir: str
    out_dir: str
    seed: int
    files: dict[str, str] = Field(default_factory=dict)  # split -> path
    counts: dict[str, SplitCounts] = Field(default_factory=dict)  # split -> counts
    candidates: dict[str, int] = Field(default_factory=dict)  # task type -> usable candidates

    def render(self) -> str:
        head = f"dataset from {self.corpus_dir} (seed {self.seed}) -> {self.out_dir}"
        return f"{head}\n{render_counts(self.counts)}"


def _tolerance(draft: Draft, answer: Answer) -> float | None:
    if answer.exact is None or answer.rounded is None:
        return None  # a name: graded as a string
    if draft.slack is None:
        return EXACT_TOLERANCE
    size = min(abs(answer.rounded), abs(answer.exact))
    if size == 0:
        return math.inf
    # Round up to 3 decimals so the stored tolerance never undercuts the slack.
    return max(0.01, math.ceil(float(draft.slack / size) * 1000) / 1000)


@dataclass(frozen=True)
class _Graded:
    draft: Draft
    answer: Answer
    tolerance: float | None


def _grade(draft: Draft, table: FactTable) -> _Graded | None:
    """The draft's answer from facts, or None when it cannot be graded fairly."""
    facts = [table.get(f.company, f.period, f.metric) for f in draft.recipe.facts]
    figures = [f.figure for f in facts if f is not None]
    if len(figures) != len(facts):
        return None
    try:
        answer = compute(draft.recipe, figures)
    except RecipeError:
        return None
    tolerance = _tolerance(draft, answer)
    if tolerance is not None and tolerance > MAX_TOLERANCE:
        return None
    return _Graded(draft, answer, tolerance)


def _row_of(graded: _Graded) -> Row:
    draft, refs = graded.draft, graded.draft.recipe.facts
    paths = list(dict.fromkeys(f.path for f in refs))
    metadata = RowMetadata.model_validate(
        {
            "task_type": draft.task_type,
            "difficulty": draft.difficulty,
            "source": "synth",
            "companies": list(dict.fromkeys(f.company for f in refs)),
            "periods": list(dict.fromkeys(f.period for f in refs)),
            "metrics": list(dict.fromkeys(f.metric for f in refs)),
            "recipe": draft.recipe.model_dump(),
        }
    )
    digest = hashlib.sha256(draft.prompt.encode()).hexdigest()[:10]
    return Row(
        id=f"{draft.task_type}-{digest}",
        prompt=draft.prompt,
        reference_answer=graded.answer.text,
        expected=Expected(
            tolerance_rel=graded.tolerance,
            evidence_path=paths[0] if len(paths) == 1 else paths,
            must_use_tools=list(MUST_USE_TOOLS),
        ),
        metadata=metadata,
        grader=draft.grader,
    )


def _sample(task_type: str, table: FactTable, seed: int, want: int) -> tuple[list[Row], int]:
    rng = random.Random(f"{seed}:{task_type}:draft")
    pool: dict[str, _Graded] = {}
    for draft in GENERATORS[task_type](table, rng):
        graded = _grade(draft, table)
        if graded is not None:
            pool.setdefault(draft.prompt, graded)  # identical prompts would leak across splits
    usable = list(pool.values())
    picked = random.Random(f"{seed}:{task_type}:pick").sample(usable, min(want, len(usable)))
    return [_row_of(g) for g in picked], len(usable)


def split_rows(rows: list[Row], seed: int, val_fraction: float) -> tuple[list[Row], list[Row]]:
    """Stratified split: each (task_type, difficulty) gives ``val_fraction`` of its rows to val,
    at least one row to each side when it has two or more."""
    strata: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        strata[(row.metadata.task_type, row.metadata.difficulty)].append(row)
    train: list[Row] = []
    val: list[Row] = []
    for key in sorted(strata):
        group = sorted(strata[key], key=lambda r: r.id)
        random.Random(f"{seed}:split:{key[0]}:{key[1]}").shuffle(group)
        n_val = round(len(group) * val_fraction)
        n_val = min(max(n_val, 1), len(group) - 1) if len(group) > 1 else 0
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def build_dataset(
    corpus_dir: Path,
    out_dir: Path,
    seed: int = 0,
    val_fraction: float = 0.15,
    counts: dict[str, int] | None = None,
) -> BuildSummary:
    """Write ``out_dir/train.jsonl`` and ``out_dir/val.jsonl`` built from corpus facts."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    facts_path = Path(corpus_dir) / "facts.jsonl"
    if not facts_path.is_file():
        raise DatasetError([f"{facts_path}: no facts.jsonl (generate with `corpus synth`)"])
    table = FactTable(load_fact_lines(facts_path))
    summary = BuildSummary(corpus_dir=str(corpus_dir), out_dir=str(out_dir), seed=seed)
    rows: list[Row] = []
    for task_type, want in (counts or DEFAULT_COUNTS).items():
        picked, available = _sample(task_type, table, seed, want)
        summary.candidates[task_type] = available
        rows += picked
    train, val = split_rows(rows, seed, val_fraction)
    for name, split in (("train", train), ("val", val)):
        path = Path(out_dir) / f"{name}.jsonl"
        write_rows(path, split)
        summary.files[name] = str(path)
        summary.counts[name] = count_rows(split)
    summary.counts["total"] = count_rows(rows)
    return summary


def parse_counts(items: list[str]) -> dict[str, int] | None:
    """`TASK=N` items (CLI) -> counts; None for no items (the defaults)."""
    counts: dict[str, int] = {}
    for item in items:
        task, _, number = item.partition("=")
        if task not in DEFAULT_COUNTS or not number.isdigit():
            known = ", ".join(DEFAULT_COUNTS)
            raise DatasetError([f"--count {item!r}: expected TASK=N with TASK one of {known}"])
        counts[task] = int(number)
    return counts or None


def build_command(corpus: Path, out: Path, seed: int = 0, counts: list[str] | None = None) -> int:
    """CLI verb: build the dataset and print counts per split, task type and difficulty.
    Bad arguments or corpus files raise DatasetError or OSError, which the CLI prints as
    one line (exit status 2)."""
    summary = build_dataset(corpus, out, seed=seed, counts=parse_counts(counts or []))
    print(summary.render())
    return 0
