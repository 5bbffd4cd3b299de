"""Counts of rows per difficulty and task type, rendered as a plain-text table.

Shared by the builders' summaries and the validator, so every command prints the same shape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from pydantic import BaseModel, Field

from envs.data.rows import DIFFICULTIES, Row

__all__ = ["SplitCounts", "count_rows", "render_counts"]


class SplitCounts(BaseModel):
    """How many rows one file (or split) holds, by difficulty and by task type."""

    rows: int = 0
    difficulty: dict[str, int] = Field(default_factory=dict)
    task_type: dict[str, int] = Field(default_factory=dict)
    stratum: dict[str, int] = Field(default_factory=dict)  # "task_type/difficulty"


def count_rows(rows: Iterable[Row]) -> SplitCounts:
    diff: Counter[str] = Counter()
    kind: Counter[str] = Counter()
    stratum: Counter[str] = Counter()
    total = 0
    for row in rows:
        total += 1
        diff[row.metadata.difficulty] += 1
        kind[row.metadata.task_type] += 1
        stratum[f"{row.metadata.task_type}/{row.metadata.difficulty}"] += 1
    return SplitCounts(
        rows=total,
        difficulty=dict(sorted(diff.items())),
        task_type=dict(sorted(kind.items())),
        stratum=dict(sorted(stratum.items())),
    )


def render_counts(counts: Mapping[str, SplitCounts]) -> str:
    """One line per file/split: rows, then each difficulty, then each task type."""
    kinds = sorted({k for c in counts.values() for k in c.task_type})
    # Generated tasks no policy was probed on are "unmeasured": a column only when there are any.
    levels = [
        *DIFFICULTIES,
        *sorted({d for c in counts.values() for d in c.difficulty} - set(DIFFICULTIES)),
    ]
    header = ["", "rows", *levels, *kinds]
    table = [header]
    for name, c in counts.items():
        table.append(
            [
                name,
                str(c.rows),
                *(str(c.difficulty.get(d, 0)) for d in levels),
                *(str(c.task_type.get(k, 0)) for k in kinds),
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for i, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
