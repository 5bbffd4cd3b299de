"""Trajectory JSONL files: written one line per finished episode, read back to resume a run.

This module is their only writer: `TrajectoryWriter` appends as episodes finish, and
`rewrite_trajectories` replaces a whole file atomically (re-judging). A killed run can leave a
half-written last line. Readers skip it (and say so); the writer cuts it off before appending,
so a resumed run never glues a new record onto a broken one; a rewrite leaves none. A bad line
anywhere else is corruption and is reported with its line number, not skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from rollout.errors import RolloutConfigError
from rollout.trajectory import Trajectory, TrajectoryGroup, group_trajectories


@dataclass
class TrajectoryFile:
    trajectories: list[Trajectory]  # one per (group, sample); a later record replaces an earlier
    partial_tail: bool  # the last line was cut short by a killed writer and was skipped


def _complete_length(data: bytes) -> int:
    """Bytes up to and including the last newline: everything a writer finished."""
    return data.rfind(b"\n") + 1


def read_trajectories(path: Path) -> TrajectoryFile:
    if not path.exists():
        return TrajectoryFile([], False)
    data = path.read_bytes()
    complete = _complete_length(data)
    by_key: dict[tuple[str, int], Trajectory] = {}
    for number, line in enumerate(data[:complete].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            trajectory = Trajectory.model_validate_json(line)
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise RolloutConfigError(
                f"{path}:{number}: not a trajectory record ({first}); "
                "is this the output file of another tool?"
            ) from None
        by_key[trajectory.key] = trajectory
    return TrajectoryFile(list(by_key.values()), partial_tail=complete < len(data))


def read_groups(path: Path) -> list[TrajectoryGroup]:
    return group_trajectories(read_trajectories(path).trajectories)


def _line(trajectory: Trajectory) -> str:
    return trajectory.model_dump_json() + "\n"


def rewrite_trajectories(path: Path, trajectories: Iterable[Trajectory]) -> None:
    """Replace `path` with exactly these trajectories, all or nothing.

    Written to a file beside it, synced, then renamed over it: a kill mid-write leaves the old
    file whole instead of a file cut short.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.rewrite")
    try:
        with staging.open("w", encoding="utf-8") as handle:
            handle.writelines(_line(t) for t in trajectories)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)  # only still there when the rewrite failed


class TrajectoryWriter:
    """Appends trajectories to a JSONL file, one flushed line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_tail()
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def _drop_partial_tail(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("r+b") as handle:
            data = handle.read()
            complete = _complete_length(data)
            if complete < len(data):
                handle.truncate(complete)

    def write(self, trajectory: Trajectory) -> None:
        # One write call per line, then flush: a kill can cut at most the line in flight.
        self._file.write(_line(trajectory))
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
