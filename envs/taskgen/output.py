"""Generated tasks as dataset rows, a train/val split stratified by measured difficulty, and
an all-or-nothing write.

Difficulty is never self-rated: a row is easy, medium or hard only by the pass rate a policy
measured on it (rollout.task_probe), and "unmeasured" otherwise. The split keeps each stratum's
share of val the same (largest remainders), so val is as hard as train. Files are written into
a scratch directory beside --out and moved in at the end: a run that fails leaves --out as it
was.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from envs.data.rows import Difficulty, Row, RowMetadata
from envs.taskgen.records import KeptTask, TaskgenError

EASY_FROM = 0.75  # pass rate at or above: easy
HARD_UP_TO = 0.25  # pass rate at or below: hard; between: medium
STRATA: tuple[Difficulty, ...] = ("easy", "medium", "hard", "unmeasured")


def difficulty_of(pass_rate: float | None) -> Difficulty:
    if pass_rate is None:
        return "unmeasured"
    if pass_rate >= EASY_FROM:
        return "easy"
    if pass_rate <= HARD_UP_TO:
        return "hard"
    return "medium"


def row_id(env_id: str, prompt: str) -> str:
    return "gen-" + hashlib.sha1(f"{env_id}\n{prompt}".encode()).hexdigest()[:12]


def task_rows(env_id: str, tasks: list[KeptTask]) -> list[Row]:
    """One row per task: the env's own tools (`tools: []`), provenance in metadata."""
    rows = []
    for kept in tasks:
        task = kept.task
        metadata = RowMetadata.model_validate(
            {
                "task_type": task.task_type,
                "difficulty": "unmeasured",
                "env_id": env_id,
                "observation_ids": list(dict.fromkeys(task.observation_ids)),
                "source_tools": kept.source_tools,
            }
        )
        rows.append(
            Row(
                id=row_id(env_id, task.prompt),
                prompt=task.prompt,
                reference_answer=task.reference_answer,
                metadata=metadata,
            )
        )
    return rows


def with_pass_rates(rows: list[Row], measured: Mapping[str, tuple[float, int]]) -> list[Row]:
    """Rows carrying `measured[row.id] = (pass rate, attempts scored)` and the difficulty it
    puts them in; rows without a measurement stay unmeasured."""
    out = []
    for row in rows:
        if row.id not in measured:
            out.append(row)
            continue
        rate, attempts = measured[row.id]
        data = row.metadata.model_dump()
        data.update(difficulty=difficulty_of(rate), pass_rate=rate, probe_attempts=attempts)
        out.append(row.model_copy(update={"metadata": RowMetadata.model_validate(data)}))
    return out


def split_rows(rows: list[Row], val_share: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, val): val gets `val_share` of the rows, the same share of every difficulty
    stratum (largest remainders decide the odd rows); seeded, in the rows' order within each."""
    strata: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        strata.setdefault(row.metadata.difficulty, []).append(i)
    total = round(len(rows) * val_share)
    exact = {name: len(members) * val_share for name, members in strata.items()}
    quota = {name: int(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (-(exact[name] - quota[name]), name))
    for name in by_remainder[: max(0, total - sum(quota.values()))]:
        quota[name] += 1
    rng = random.Random(seed)
    val: set[int] = set()
    for name in sorted(strata):
        members = list(strata[name])
        rng.shuffle(members)
        val.update(members[: quota[name]])
    train = [row for i, row in enumerate(rows) if i not in val]
    return train, [row for i, row in enumerate(rows) if i in val]


def row_line(row: Row) -> str:
    """A row as one JSON line; a missing reference answer is written as an explicit null."""
    data: dict[str, Any] = row.model_dump(mode="json", exclude_none=True)
    first = {key: data.pop(key, None) for key in ("id", "prompt", "reference_answer")}
    return json.dumps({**first, **data}, ensure_ascii=False)


def rows_text(rows: list[Row]) -> str:
    return "".join(row_line(row) + "\n" for row in rows)


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TaskgenError(f"--out {out} is a file; tasks generate writes a directory")


def write_outputs(out: Path, files: Mapping[str, str]) -> None:
    """Write `files` (name -> text) into `out` all at once: into a scratch directory first,
    then one rename (a new --out) or one rename per file (an existing one)."""
    check_out_dir(out)
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=parent))
    try:
        for name, text in files.items():
            (scratch / name).write_text(text, encoding="utf-8")
        if not out.exists():
            os.replace(scratch, out)
            return
        for name in files:
            os.replace(scratch / name, out / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
