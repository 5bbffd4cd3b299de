"""The dataset row: one task for a tool-using agent, as one line of JSONL.

    {"id": "lookup-3f2a9c01de", "prompt": "What was Henderson Industries' revenue ...?",
     "reference_answer": "$1,843.3 million", "grader": "numeric",
     "expected": {"tolerance_rel": 0.001, "evidence_path": "filings/...html",
                  "must_use_tools": ["search", "read"]},
     "tools": [], "metadata": {"task_type": "lookup", "difficulty": "easy", ...}}

`reference_answer` may be left out: such a row is a task without a label, which the
environment's grader never grades (only a judge scoring attempts against each other can).

Loading reports every bad line of a file at once (``file:line: problem``), because a dataset
author fixing one error per run would take forever on a generated file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from envs.errors import EnvError

__all__ = [
    "DatasetError",
    "Difficulty",
    "Expected",
    "GraderHint",
    "NumberedRow",
    "Problem",
    "Row",
    "RowMetadata",
    "load_rows",
    "read_rows",
    "write_rows",
]

# "unmeasured": a generated task no policy has been probed on (`toolgym tasks generate`
# without --policy, or a task without a reference answer): its difficulty is not guessed.
Difficulty = Literal["easy", "medium", "hard", "unmeasured"]
GraderHint = Literal["numeric", "string", "spans"]
DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "medium", "hard")


class Expected(BaseModel):
    """What a correct episode looks like beyond the answer text."""

    model_config = ConfigDict(extra="forbid")

    tolerance_rel: float | None = Field(default=None, ge=0.0)
    evidence_path: str | list[str] | None = None
    must_use_tools: list[str] = Field(default_factory=list)

    def evidence_paths(self) -> list[str]:
        """The evidence as a list, whichever form the row used."""
        if self.evidence_path is None:
            return []
        if isinstance(self.evidence_path, str):
            return [self.evidence_path]
        return list(self.evidence_path)


class RowMetadata(BaseModel):
    """Slicing keys. Extra keys are allowed: builders record recipes and provenance here."""

    model_config = ConfigDict(extra="allow")

    task_type: str = Field(min_length=1)
    difficulty: Difficulty

    def extra(self, key: str, default: Any = None) -> Any:
        """An extra (non-schema) key, e.g. ``metadata.extra("recipe")``."""
        return (self.model_extra or {}).get(key, default)


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    # None: an unlabelled task (e.g. generated from a tool server). The environment's grader is
    # never asked about it; only a reward without labels (a RULER judge alone) can score it.
    reference_answer: str | list[str] | None = None
    expected: Expected = Field(default_factory=Expected)
    # Empty means "whatever the tool server offers" (GET /tools).
    tools: list[dict[str, Any]] = Field(default_factory=list)
    metadata: RowMetadata
    grader: GraderHint | None = None

    @field_validator("reference_answer")
    @classmethod
    def _answer_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is None:
            return value
        answers = [value] if isinstance(value, str) else value
        if not answers or any(not a.strip() for a in answers):
            raise ValueError("reference_answer must be a non-empty string or list of them")
        return value

    @field_validator("tools")
    @classmethod
    def _function_specs(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, spec in enumerate(value):
            function = spec.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if spec.get("type") != "function" or not isinstance(name, str) or not name:
                raise ValueError(
                    f"tools[{i}] is not an OpenAI function spec "
                    '({"type": "function", "function": {"name": ..., "parameters": {...}}})'
                )
        return value

    @property
    def labelled(self) -> bool:
        """Whether the row carries a reference answer for the grader."""
        return self.reference_answer is not None

    def answers(self) -> list[str]:
        """The reference answer as a list (one element unless multi-span; none if unlabelled)."""
        ref = self.reference_answer
        if ref is None:
            return []
        return [ref] if isinstance(ref, str) else list(ref)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset file; ``line`` is 1-based, 0 for the whole file."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class NumberedRow:
    line: int
    row: Row


class DatasetError(EnvError):
    """Rows that do not load; ``problems`` lists every bad line, not just the first."""

    def __init__(self, problems: Sequence[Problem | str]) -> None:
        self.problems = [str(p) for p in problems]
        if len(self.problems) == 1:  # one line, as the CLI prints it
            super().__init__(self.problems[0])
            return
        listing = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in dataset:\n{listing}")


def _schema_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "row"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def read_rows(path: Path) -> tuple[list[NumberedRow], list[Problem]]:
    """Parse a JSONL file, keeping every good row and a problem for every bad line."""
    name = str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Problem(name, 0, f"cannot read file: {exc}")]
    rows: list[NumberedRow] = []
    problems: list[Problem] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(name, number, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(data, dict):
            problems.append(Problem(name, number, "a row must be a JSON object"))
            continue
        try:
            rows.append(NumberedRow(number, Row.model_validate(data)))
        except ValidationError as exc:
            problems.append(Problem(name, number, _schema_message(exc)))
    return rows, problems


def load_rows(path: Path | str) -> list[Row]:
    """Load a JSONL dataset; raise one `DatasetError` listing every bad line."""
    rows, problems = read_rows(Path(path))
    if problems:
        raise DatasetError(problems)
    return [r.row for r in rows]


def write_rows(path: Path | str, rows: Iterable[Row]) -> int:
    """Write rows as JSONL (parents created); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(row.model_dump_json(exclude_none=True) + "\n")
            count += 1
    return count
