"""Check dataset files before training on them: schema, duplicates, leakage, evidence.

Problems are collected across all files, never stopping at the first, and each names its
``file:line``. Leakage is checked by prompt text (whitespace and case folded): the same
question in train and val inflates validation scores whatever the ids say.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field

from envs.data.report import SplitCounts, count_rows, render_counts
from envs.data.rows import NumberedRow, Problem, read_rows

__all__ = ["ValidationReport", "validate_command", "validate_files"]


UNLABELLED_NOTE = (
    "{count} row(s) in {file} have no reference_answer (null): valid, but the environment's "
    "grader cannot score them; they need a reference-free reward, a RULER judge alone "
    "(`toolgym rollout --ruler-model M --ruler-weight 1`; in a train config, `reward.ruler` "
    "with no grader share)"
)


class ValidationReport(BaseModel):
    files: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    counts: dict[str, SplitCounts] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)  # worth knowing, not wrong

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        if self.problems:
            head = f"{len(self.problems)} problem(s):\n" + "\n".join(
                f"  {p}" for p in self.problems
            )
        else:
            head = f"OK: {len(self.files)} file(s), no problems"
        notes = "".join(f"\nnote: {note}" for note in self.notes)
        return f"{head}{notes}\n\n{render_counts(self.counts)}"


def _norm(prompt: str) -> str:
    return " ".join(prompt.split()).casefold()


def _safe_relative(path: str) -> bool:
    p = PurePosixPath(path.replace("\\", "/"))
    return bool(path) and not p.is_absolute() and ".." not in p.parts and ":" not in p.parts[0]


def _row_problems(name: str, item: NumberedRow, corpus_dir: Path | None) -> list[Problem]:
    """Checks that need only the row itself (and the corpus, when given)."""
    row, out = item.row, []
    if isinstance(row.reference_answer, list) and row.grader not in (None, "spans"):
        out.append(Problem(name, item.line, f"list reference_answer with grader {row.grader!r}"))
    offered = {t["function"]["name"] for t in row.tools}
    missing = [t for t in row.expected.must_use_tools if offered and t not in offered]
    if missing:
        out.append(Problem(name, item.line, f"must_use_tools not in tools: {missing}"))
    if corpus_dir is not None:
        for path in row.expected.evidence_paths():
            if not _safe_relative(path) or not (corpus_dir / path).is_file():
                msg = f"evidence path {path!r} does not exist under {corpus_dir}"
                out.append(Problem(name, item.line, msg))
    return out


def _cross_problems(parsed: dict[str, list[NumberedRow]]) -> list[Problem]:
    """Duplicate ids anywhere, duplicate prompts in a file, prompts shared between files."""
    ids: dict[str, str] = {}
    prompts: dict[str, tuple[str, int]] = {}
    out: list[Problem] = []
    for name, rows in parsed.items():
        for item in rows:
            where = f"{name}:{item.line}"
            first = ids.setdefault(item.row.id, where)
            if first != where:
                out.append(
                    Problem(name, item.line, f"duplicate id {item.row.id!r} (first {first})")
                )
            key = _norm(item.row.prompt)
            seen = prompts.setdefault(key, (name, item.line))
            if seen == (name, item.line):
                continue
            if seen[0] == name:
                msg = f"duplicate prompt (first at line {seen[1]})"
            else:
                msg = f"prompt also in {seen[0]}:{seen[1]} (overlap between files)"
            out.append(Problem(name, item.line, msg))
    return out


def validate_files(paths: Sequence[Path], corpus_dir: Path | None = None) -> ValidationReport:
    """Validate JSONL dataset files together (ids and prompts are checked across files)."""
    report = ValidationReport(files=list(dict.fromkeys(str(p) for p in paths)))
    parsed: dict[str, list[NumberedRow]] = {}
    problems: list[Problem] = []
    if corpus_dir is not None and not Path(corpus_dir).is_dir():
        problems.append(Problem(str(corpus_dir), 0, "corpus directory does not exist"))
        corpus_dir = None
    for name in report.files:
        rows, bad = read_rows(Path(name))
        parsed[name] = rows
        problems += bad
        for item in rows:
            problems += _row_problems(name, item, Path(corpus_dir) if corpus_dir else None)
        report.counts[name] = count_rows(r.row for r in rows)
        unlabelled = sum(1 for r in rows if r.row.reference_answer is None)
        if unlabelled:
            report.notes.append(UNLABELLED_NOTE.format(count=unlabelled, file=name))
    problems += _cross_problems(parsed)
    order = {name: i for i, name in enumerate(report.files)}
    problems.sort(key=lambda p: (order.get(p.file, -1), p.line))  # stable: checks keep order
    report.problems = [str(p) for p in problems]
    return report


def validate_command(paths: list[Path], corpus: Path | None = None) -> int:
    """CLI verb: print the report; exit status 1 when there is any problem."""
    if not paths:
        print("error: give at least one dataset file", file=sys.stderr)
        return 2
    report = validate_files(paths, corpus)
    print(report.render())
    return 0 if report.ok else 1
