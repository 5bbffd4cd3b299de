"""Base vs tuned, sample by sample and slice by slice.

Both policies play the same rows with the same seeds; each row's attempts are averaged per
side, and the row's outcome is one of: improved, regressed, unchanged (already solved), or
unchanged (never solved). Slices group rows by any metadata key; the spread of per-slice deltas
shows when a good average hides a slice that broke.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Literal

from pydantic import BaseModel, Field

from rollout.trajectory import Trajectory

Outcome = Literal["improved", "regressed", "unchanged_solved", "unchanged_unsolved", "failed"]


class SideResult(BaseModel):
    reward: float | None  # mean over scored attempts; None when every attempt failed
    tool_calls: float
    attempts: int
    failed: int


class SampleComparison(BaseModel):
    id: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    base: SideResult
    tuned: SideResult
    reward_delta: float | None
    tool_calls_delta: float
    outcome: Outcome


class SliceStats(BaseModel):
    key: str
    value: str
    n: int
    base_reward: float
    tuned_reward: float
    reward_delta: float
    improved: int
    regressed: int


class ComparisonSummary(BaseModel):
    rows: int
    compared: int  # rows with a reward on both sides
    base_reward: float
    tuned_reward: float
    reward_delta: float
    tool_calls_delta: float
    improved: int
    regressed: int
    unchanged_solved: int
    unchanged_unsolved: int
    failed: int  # rows where a side has no scored attempt (infrastructure errors)


class Comparison(BaseModel):
    summary: ComparisonSummary
    samples: list[SampleComparison]
    slices: dict[str, list[SliceStats]]  # metadata key -> one entry per value
    slice_spread: dict[str, float]  # metadata key -> max - min of per-slice reward deltas
    tolerance: float
    solved_threshold: float

    def regressions(self) -> list[SampleComparison]:
        """Worst first."""
        regressed = [s for s in self.samples if s.outcome == "regressed"]
        return sorted(regressed, key=lambda s: (s.reward_delta or 0.0, s.id))


def side_result(attempts: list[Trajectory]) -> SideResult:
    scored = [t for t in attempts if not t.failed and t.reward is not None]
    return SideResult(
        reward=statistics.fmean(t.reward or 0.0 for t in scored) if scored else None,
        tool_calls=statistics.fmean([t.metrics.tool_calls for t in scored] or [0.0]),
        attempts=len(attempts),
        failed=len(attempts) - len(scored),
    )


def outcome_of(base: float | None, tuned: float | None, tolerance: float, solved: float) -> Outcome:
    if base is None or tuned is None:
        return "failed"
    if tuned - base > tolerance:
        return "improved"
    if base - tuned > tolerance:
        return "regressed"
    return "unchanged_solved" if min(base, tuned) >= solved else "unchanged_unsolved"


def by_row(trajectories: list[Trajectory]) -> dict[str, list[Trajectory]]:
    rows: dict[str, list[Trajectory]] = defaultdict(list)
    for trajectory in trajectories:
        rows[trajectory.row_id].append(trajectory)
    return rows


def compare_samples(
    base: list[Trajectory],
    tuned: list[Trajectory],
    *,
    tolerance: float = 1e-6,
    solved_threshold: float = 0.5,
) -> list[SampleComparison]:
    base_rows, tuned_rows = by_row(base), by_row(tuned)
    samples = []
    for row_id in sorted(set(base_rows) | set(tuned_rows)):
        b, t = side_result(base_rows.get(row_id, [])), side_result(tuned_rows.get(row_id, []))
        source = (base_rows.get(row_id) or tuned_rows[row_id])[0]
        delta = None if b.reward is None or t.reward is None else t.reward - b.reward
        samples.append(
            SampleComparison(
                id=row_id,
                metadata=source.metadata,
                base=b,
                tuned=t,
                reward_delta=delta,
                tool_calls_delta=t.tool_calls - b.tool_calls,
                outcome=outcome_of(b.reward, t.reward, tolerance, solved_threshold),
            )
        )
    return samples


def slice_stats(samples: list[SampleComparison]) -> dict[str, list[SliceStats]]:
    keys = sorted({k for s in samples for k, v in s.metadata.items() if _sliceable(v)})
    slices: dict[str, list[SliceStats]] = {}
    for key in keys:
        groups: dict[str, list[SampleComparison]] = defaultdict(list)
        for sample in samples:
            if sample.reward_delta is not None and _sliceable(sample.metadata.get(key)):
                groups[str(sample.metadata[key])].append(sample)
        if len(groups) < 2 or len(groups) > 50:  # one value, or an id-like key: no slicing
            continue
        slices[key] = [
            SliceStats(
                key=key,
                value=value,
                n=len(members),
                base_reward=statistics.fmean(m.base.reward or 0.0 for m in members),
                tuned_reward=statistics.fmean(m.tuned.reward or 0.0 for m in members),
                reward_delta=statistics.fmean(m.reward_delta or 0.0 for m in members),
                improved=sum(m.outcome == "improved" for m in members),
                regressed=sum(m.outcome == "regressed" for m in members),
            )
            for value, members in sorted(groups.items())
        ]
    return slices


def _sliceable(value: Any) -> bool:
    return isinstance(value, str | int | bool) and not isinstance(value, float)


def compare(
    base: list[Trajectory],
    tuned: list[Trajectory],
    *,
    tolerance: float = 1e-6,
    solved_threshold: float = 0.5,
) -> Comparison:
    samples = compare_samples(base, tuned, tolerance=tolerance, solved_threshold=solved_threshold)
    both = [s for s in samples if s.reward_delta is not None]
    counts = {o: sum(s.outcome == o for s in samples) for o in Outcome.__args__}  # type: ignore[attr-defined]
    slices = slice_stats(samples)
    summary = ComparisonSummary(
        rows=len(samples),
        compared=len(both),
        base_reward=statistics.fmean(s.base.reward or 0.0 for s in both) if both else 0.0,
        tuned_reward=statistics.fmean(s.tuned.reward or 0.0 for s in both) if both else 0.0,
        reward_delta=statistics.fmean(s.reward_delta or 0.0 for s in both) if both else 0.0,
        tool_calls_delta=statistics.fmean(s.tool_calls_delta for s in both) if both else 0.0,
        **counts,
    )
    spread = {
        key: max(s.reward_delta for s in stats) - min(s.reward_delta for s in stats)
        for key, stats in slices.items()
    }
    return Comparison(
        summary=summary,
        samples=samples,
        slices=slices,
        slice_spread=spread,
        tolerance=tolerance,
        solved_threshold=solved_threshold,
    )
