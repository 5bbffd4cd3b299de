"""Base vs tuned, sample by sample and slice by slice.

Both policies play the same rows with the same seeds; each row's attempts are averaged per
side, and the row's outcome is one of: improved, regressed, unchanged (already solved), or
unchanged (never solved). Each side also gets pass@1, pass@k and their gap, the headroom: the
most RL can still hope to win on these rows (see rollout.summary.PassRates).

Slices group rows by a metadata key. A text, whole-number or boolean value puts a row in that
value's slice; a list value puts it in the slice of each of its (such) items, so a row about two
companies counts in both companies' slices and a key's slice sizes can add up to more than the
rows. Keys are skipped, with the reason kept in `Comparison.skipped_slice_keys`, when their values
are dicts (or anything else without items to slice by), when they have a single value, or more
than `MAX_SLICE_VALUES` (ids, free text: a table nobody reads). The spread of per-slice deltas
shows when a good average hides a slice that broke; it and the worst slice count only slices
with at least `min_slice_rows` rows (5 by default), so a one-row slice cannot dominate.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from rollout.summary import PassRates, pass_rates
from rollout.trajectory import Trajectory

Outcome = Literal["improved", "regressed", "unchanged_solved", "unchanged_unsolved", "failed"]
# A row's majority outcome (more than half of its scored attempts solved) changed sides.
Flip = Literal["pass_to_fail", "fail_to_pass"]

MAX_SLICE_VALUES = 50  # more distinct values than this is an id or free text, not a slice
MIN_SLICE_ROWS = 5  # smaller slices are listed; the spread (and worst, if it can) skips them
SHOWN_SLICES = 12  # per key, the report shows the most populated slices (and the worst)


class SideResult(BaseModel):
    reward: float | None  # mean over scored attempts; None when every attempt failed
    tool_calls: float
    attempts: int
    failed: int
    successes: int = 0  # scored attempts with reward >= the solved threshold

    @property
    def success_rate(self) -> float | None:
        """Share of the scored attempts that solved the row; None when none was scored."""
        scored = self.attempts - self.failed
        return self.successes / scored if scored > 0 else None


class SampleComparison(BaseModel):
    id: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    base: SideResult
    tuned: SideResult
    reward_delta: float | None
    tool_calls_delta: float
    outcome: Outcome
    success_delta: float | None = None  # tuned - base success rate (share of solved attempts)
    flip: Flip | None = None
    # 95% interval of the mean success-rate delta of every cohort this row is in ("overall",
    # "key=value"): filled in by rollout.stats once the whole comparison is known.
    delta_ci: dict[str, tuple[float, float]] = Field(default_factory=dict)


class SliceStats(BaseModel):
    """The rows whose `key` is `value` (or, for a list, holds it): a row can be in several."""

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
    # Over the compared rows, success = reward >= the solved threshold, k = attempts per row.
    base_pass: PassRates
    tuned_pass: PassRates


class Comparison(BaseModel):
    summary: ComparisonSummary
    samples: list[SampleComparison]
    slices: dict[str, list[SliceStats]]  # metadata key -> one entry per value
    # metadata key -> max - min of the deltas of slices with >= min_slice_rows rows; None when
    # fewer than two slices are that big
    slice_spread: dict[str, float | None]
    tolerance: float
    solved_threshold: float
    min_slice_rows: int = MIN_SLICE_ROWS
    list_slice_keys: list[str] = Field(default_factory=list)  # sliced by their lists' items
    skipped_slice_keys: dict[str, str] = Field(default_factory=dict)  # key -> why not sliced

    def regressions(self) -> list[SampleComparison]:
        """Worst first."""
        regressed = [s for s in self.samples if s.outcome == "regressed"]
        return sorted(regressed, key=lambda s: (s.reward_delta or 0.0, s.id))


def side_result(attempts: list[Trajectory], solved_threshold: float = 0.5) -> SideResult:
    scored = [t for t in attempts if not t.failed and t.reward is not None]
    return SideResult(
        reward=statistics.fmean(t.reward or 0.0 for t in scored) if scored else None,
        tool_calls=statistics.fmean([t.metrics.tool_calls for t in scored] or [0.0]),
        attempts=len(attempts),
        failed=len(attempts) - len(scored),
        successes=sum(1 for t in scored if (t.reward or 0.0) >= solved_threshold),
    )


def outcome_of(base: float | None, tuned: float | None, tolerance: float, solved: float) -> Outcome:
    if base is None or tuned is None:
        return "failed"
    if tuned - base > tolerance:
        return "improved"
    if base - tuned > tolerance:
        return "regressed"
    return "unchanged_solved" if min(base, tuned) >= solved else "unchanged_unsolved"


def flip_of(base: SideResult, tuned: SideResult) -> Flip | None:
    """pass_to_fail when the row passed by majority (more than half of its scored attempts
    solved) on base and not on tuned; fail_to_pass the other way. A tie is not a pass: with
    2 of 4 solved the policy cannot be said to solve the row."""
    base_rate, tuned_rate = base.success_rate, tuned.success_rate
    if base_rate is None or tuned_rate is None:
        return None
    before, after = base_rate > 0.5, tuned_rate > 0.5
    if before == after:
        return None
    return "pass_to_fail" if before else "fail_to_pass"


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
        b = side_result(base_rows.get(row_id, []), solved_threshold)
        t = side_result(tuned_rows.get(row_id, []), solved_threshold)
        source = (base_rows.get(row_id) or tuned_rows[row_id])[0]
        delta = None if b.reward is None or t.reward is None else t.reward - b.reward
        rates = (b.success_rate, t.success_rate)
        samples.append(
            SampleComparison(
                id=row_id,
                metadata=source.metadata,
                base=b,
                tuned=t,
                reward_delta=delta,
                tool_calls_delta=t.tool_calls - b.tool_calls,
                outcome=outcome_of(b.reward, t.reward, tolerance, solved_threshold),
                success_delta=None if None in rates else (rates[1] or 0.0) - (rates[0] or 0.0),
                flip=flip_of(b, t),
            )
        )
    return samples


@dataclass(frozen=True)
class Slicing:
    slices: dict[str, list[SliceStats]]
    list_keys: list[str]  # keys sliced by their lists' items (a row in several slices)
    skipped: dict[str, str]  # key -> why it is not sliced


def _scalar(value: Any) -> bool:
    # bool is an int; a float (a score, a ratio) would make one slice per value
    return isinstance(value, str | int) and not isinstance(value, float)


def slice_values(value: Any) -> list[str]:
    """The slices a metadata value puts its row in: itself, or each distinct item of a list."""
    if _scalar(value):
        return [str(value)]
    if isinstance(value, list | tuple):
        return sorted({str(item) for item in value if _scalar(item)})
    return []


def _why_not_sliced(values: list[Any], groups: dict[str, Any], most: int) -> str | None:
    """Why `key` gives no readable slices (None when it does)."""
    if not groups:
        if any(isinstance(v, dict) for v in values):
            return "dict values"
        return "no text or whole-number value on any compared row"
    if len(groups) == 1:
        return f"one value only ({next(iter(groups))!r})"
    if len(groups) > most:
        return f"{len(groups)} distinct values (more than {most} is not readable)"
    return None


def _slice(key: str, value: str, members: list[SampleComparison]) -> SliceStats:
    return SliceStats(
        key=key,
        value=value,
        n=len(members),
        base_reward=statistics.fmean(m.base.reward or 0.0 for m in members),
        tuned_reward=statistics.fmean(m.tuned.reward or 0.0 for m in members),
        reward_delta=statistics.fmean(m.reward_delta or 0.0 for m in members),
        improved=sum(m.outcome == "improved" for m in members),
        regressed=sum(m.outcome == "regressed" for m in members),
    )


def slice_stats(samples: list[SampleComparison], *, max_values: int = MAX_SLICE_VALUES) -> Slicing:
    """Per metadata key, one SliceStats per value over the compared rows (see the module doc:
    a list value puts its row in each of its items' slices)."""
    compared = [s for s in samples if s.reward_delta is not None]
    slices: dict[str, list[SliceStats]] = {}
    list_keys, skipped = [], {}
    for key in sorted({k for s in samples for k in s.metadata}):
        groups: dict[str, list[SampleComparison]] = defaultdict(list)
        for sample in compared:
            for value in slice_values(sample.metadata.get(key)):
                groups[value].append(sample)
        values = [s.metadata[key] for s in samples if key in s.metadata]
        reason = _why_not_sliced(values, groups, max_values)
        if reason is not None:
            skipped[key] = reason
            continue
        slices[key] = [_slice(key, value, members) for value, members in sorted(groups.items())]
        if any(isinstance(v, list | tuple) for v in values):
            list_keys.append(key)
    return Slicing(slices, list_keys, skipped)


def sized(stats: Iterable[SliceStats], min_rows: int) -> list[SliceStats]:
    """The slices big enough to judge by."""
    return [s for s in stats if s.n >= min_rows]


def spread(stats: list[SliceStats], min_rows: int = MIN_SLICE_ROWS) -> float | None:
    """Max - min of the deltas of slices with >= min_rows rows; None when fewer than two are."""
    counted = sized(stats, min_rows)
    if len(counted) < 2:
        return None
    return max(s.reward_delta for s in counted) - min(s.reward_delta for s in counted)


def worst_slice(stats: list[SliceStats], min_rows: int = MIN_SLICE_ROWS) -> SliceStats | None:
    """The lowest delta among slices with >= min_rows rows (among all when none is that big)."""
    pool = sized(stats, min_rows) or stats
    return min(pool, key=lambda s: (s.reward_delta, s.value)) if pool else None


def shown_slices(
    stats: list[SliceStats], min_rows: int = MIN_SLICE_ROWS, top: int = SHOWN_SLICES
) -> list[SliceStats]:
    """What a report can show of one key: every slice when there are at most `top`, else the
    `top` with the most rows (most first) and the worst, so a picture stays readable."""
    if len(stats) <= top:
        return stats
    shown = sorted(stats, key=lambda s: (-s.n, s.value))[:top]
    worst = worst_slice(stats, min_rows)
    return shown if worst is None or any(s is worst for s in shown) else [*shown, worst]


def _side_pass(results: Iterable[SideResult]) -> PassRates:
    return pass_rates((r.successes, r.attempts - r.failed) for r in results)


def compare(
    base: list[Trajectory],
    tuned: list[Trajectory],
    *,
    tolerance: float = 1e-6,
    solved_threshold: float = 0.5,
    min_slice_rows: int = MIN_SLICE_ROWS,
) -> Comparison:
    samples = compare_samples(base, tuned, tolerance=tolerance, solved_threshold=solved_threshold)
    both = [s for s in samples if s.reward_delta is not None]
    counts = {o: sum(s.outcome == o for s in samples) for o in Outcome.__args__}  # type: ignore[attr-defined]
    slicing = slice_stats(samples)
    summary = ComparisonSummary(
        rows=len(samples),
        compared=len(both),
        base_reward=statistics.fmean(s.base.reward or 0.0 for s in both) if both else 0.0,
        tuned_reward=statistics.fmean(s.tuned.reward or 0.0 for s in both) if both else 0.0,
        reward_delta=statistics.fmean(s.reward_delta or 0.0 for s in both) if both else 0.0,
        tool_calls_delta=statistics.fmean(s.tool_calls_delta for s in both) if both else 0.0,
        base_pass=_side_pass(s.base for s in both),
        tuned_pass=_side_pass(s.tuned for s in both),
        **counts,
    )
    return Comparison(
        summary=summary,
        samples=samples,
        slices=slicing.slices,
        slice_spread={key: spread(stats, min_slice_rows) for key, stats in slicing.slices.items()},
        tolerance=tolerance,
        solved_threshold=solved_threshold,
        min_slice_rows=min_slice_rows,
        list_slice_keys=slicing.list_keys,
        skipped_slice_keys=slicing.skipped,
    )
