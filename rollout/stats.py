"""Is the base-vs-tuned difference real, which rows flipped, did a cohort get worse?

An aggregate that moved says little before an adapter ships: on a few hundred rows a few
points of pass@1 is often noise. This module turns a `Comparison` into figures that hold up:

- The mean per-row success-rate delta (tuned - base; a row's rate is the share of its scored
  attempts that solved it, so `--attempts N` sharpens each row) with a 95% interval from a
  paired bootstrap over rows: rows differ from each other far more than the two policies do
  on one row, so each row keeps its own base and tuned rate together and whole rows are
  resampled, the rows being the sample of the questions the adapter will meet. Percentile
  interval, seeded (a rerun gives the same figures); overall and per slice (every metadata
  key the comparison slices by, a slice resampled on its own with its own derived seed).
- Flips: rows whose majority outcome changed, pass -> fail first (worst first).
- Cohort spread: per metadata key, the standard deviation of the slices' mean rewards, for
  base and tuned. A tuned model whose spread grew serves some cohorts worse relative to
  others even when its mean rose, and is flagged.

Everything here is a pure function of the comparison (and a seed).
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict

import numpy as np
from pydantic import BaseModel, Field, computed_field

from rollout.compare import Comparison, SampleComparison, sized, slice_values

LEVEL = 0.95
RESAMPLES = 2000
BOOTSTRAP_CELLS = 4_000_000  # row indices drawn at once (32 MB), whatever the number of rows
# A spread that grew by less than this is rounding, not a cohort left behind.
SPREAD_FLAG = 0.01


class Interval(BaseModel):
    low: float
    high: float

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high

    def text(self) -> str:
        return f"[{self.low:+.3f}, {self.high:+.3f}]"


class DeltaEstimate(BaseModel):
    """Mean success rates over `n` rows compared on both sides, their delta and its interval."""

    n: int
    base: float
    tuned: float
    delta: float
    ci: Interval | None  # None without rows

    @property
    def lower(self) -> float | None:
        return None if self.ci is None else self.ci.low


class SliceEstimate(DeltaEstimate):
    key: str
    value: str


class CohortSpread(BaseModel):
    """Per metadata key: the standard deviation of slice mean rewards (slices of at least
    `min_slice_rows` rows), base and tuned; None when fewer than two slices are that big."""

    key: str
    slices: int
    base: float | None
    tuned: float | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def increase(self) -> float | None:
        return None if self.base is None or self.tuned is None else self.tuned - self.base

    @computed_field  # type: ignore[prop-decorator]
    @property
    def grew(self) -> bool:
        return (self.increase or 0.0) > SPREAD_FLAG


class FlipRow(BaseModel):
    id: str
    kind: str  # pass_to_fail | fail_to_pass
    base_rate: float
    tuned_rate: float


class Statistics(BaseModel):
    """What rollout.stats makes of a comparison; the seams (gate, report, samples) read it."""

    level: float = LEVEL
    resamples: int = RESAMPLES
    seed: int = 0
    min_slice_rows: int
    overall: DeltaEstimate
    slices: dict[str, list[SliceEstimate]] = Field(default_factory=dict)
    flips: list[FlipRow] = Field(default_factory=list)  # pass_to_fail first
    spreads: list[CohortSpread] = Field(default_factory=list)

    def regression_flips(self) -> list[FlipRow]:
        return [f for f in self.flips if f.kind == "pass_to_fail"]

    def improvement_flips(self) -> list[FlipRow]:
        return [f for f in self.flips if f.kind == "fail_to_pass"]


def derived_seed(seed: int, *parts: str) -> int:
    """A stable seed per slice: the same on any machine and in any order of computation."""
    digest = hashlib.blake2b(":".join([str(seed), *parts]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def paired_bootstrap(
    base: np.ndarray,
    tuned: np.ndarray,
    *,
    seed: int,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> Interval | None:
    """Percentile interval of mean(tuned - base), resampling rows (pairs) with replacement."""
    diffs = np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)  # (rows,)
    if diffs.size == 0:
        return None
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CELLS // diffs.size)  # resamples at once: memory stays bounded
    means = np.concatenate(
        [
            diffs[
                rng.integers(0, diffs.size, size=(min(chunk, resamples - start), diffs.size))
            ].mean(axis=1)  # (resamples in this chunk,)
            for start in range(0, resamples, chunk)
        ]
    )  # (resamples,)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(low=float(low), high=float(high))


def compared_rates(samples: list[SampleComparison]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row success rates (base, tuned) of the rows scored on both sides."""
    pairs = [
        (s.base.success_rate, s.tuned.success_rate)
        for s in samples
        if s.base.success_rate is not None and s.tuned.success_rate is not None
    ]
    base = np.array([b for b, _ in pairs], dtype=float)
    tuned = np.array([t for _, t in pairs], dtype=float)
    return base, tuned


def estimate(
    samples: list[SampleComparison],
    *,
    seed: int,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> DeltaEstimate:
    base, tuned = compared_rates(samples)
    if base.size == 0:
        return DeltaEstimate(n=0, base=0.0, tuned=0.0, delta=0.0, ci=None)
    return DeltaEstimate(
        n=int(base.size),
        base=float(base.mean()),
        tuned=float(tuned.mean()),
        delta=float((tuned - base).mean()),
        ci=paired_bootstrap(base, tuned, seed=seed, resamples=resamples, level=level),
    )


def slice_members(comparison: Comparison, key: str) -> dict[str, list[SampleComparison]]:
    """The rows of each slice of `key`, with the comparison's own membership rule (a list
    value puts its row in each item's slice)."""
    groups: dict[str, list[SampleComparison]] = defaultdict(list)
    for sample in comparison.samples:
        if sample.reward_delta is None:
            continue
        for value in slice_values(sample.metadata.get(key)):
            groups[value].append(sample)
    return groups


def slice_estimates(
    comparison: Comparison, *, seed: int, resamples: int = RESAMPLES, level: float = LEVEL
) -> dict[str, list[SliceEstimate]]:
    """Per sliced key, one estimate per value (in the comparison's slice order)."""
    out: dict[str, list[SliceEstimate]] = {}
    for key, stats in comparison.slices.items():
        members = slice_members(comparison, key)
        out[key] = []
        for value in (s.value for s in stats):
            found = estimate(
                members[value],
                seed=derived_seed(seed, key, value),
                resamples=resamples,
                level=level,
            )
            out[key].append(SliceEstimate(key=key, value=value, **found.model_dump()))
    return out


def flip_rows(samples: list[SampleComparison]) -> list[FlipRow]:
    """Rows that flipped: pass -> fail first (largest drop first), then fail -> pass."""
    rows = [
        FlipRow(
            id=s.id,
            kind=s.flip,
            base_rate=s.base.success_rate or 0.0,
            tuned_rate=s.tuned.success_rate or 0.0,
        )
        for s in samples
        if s.flip is not None
    ]
    worse = sorted(
        (r for r in rows if r.kind == "pass_to_fail"),
        key=lambda r: (r.tuned_rate - r.base_rate, r.id),
    )
    better = sorted(
        (r for r in rows if r.kind == "fail_to_pass"),
        key=lambda r: (r.base_rate - r.tuned_rate, r.id),
    )
    return worse + better


def cohort_spreads(comparison: Comparison) -> list[CohortSpread]:
    """Per sliced key: the spread of slice mean rewards, base and tuned (see CohortSpread)."""
    spreads = []
    for key in sorted(comparison.slices):
        counted = sized(comparison.slices[key], comparison.min_slice_rows)
        enough = len(counted) >= 2
        spreads.append(
            CohortSpread(
                key=key,
                slices=len(counted),
                base=statistics.pstdev(s.base_reward for s in counted) if enough else None,
                tuned=statistics.pstdev(s.tuned_reward for s in counted) if enough else None,
            )
        )
    return spreads


def compute_statistics(
    comparison: Comparison, *, seed: int = 0, resamples: int = RESAMPLES, level: float = LEVEL
) -> Statistics:
    return Statistics(
        level=level,
        resamples=resamples,
        seed=seed,
        min_slice_rows=comparison.min_slice_rows,
        overall=estimate(comparison.samples, seed=seed, resamples=resamples, level=level),
        slices=slice_estimates(comparison, seed=seed, resamples=resamples, level=level),
        flips=flip_rows(comparison.samples),
        spreads=cohort_spreads(comparison),
    )


def with_intervals(comparison: Comparison, stats: Statistics) -> Comparison:
    """The comparison whose samples carry the intervals of every cohort they are in, as
    samples.jsonl writes them ("overall", "key=value")."""
    by_slice = {
        f"{e.key}={e.value}": (e.ci.low, e.ci.high)
        for estimates in stats.slices.values()
        for e in estimates
        if e.ci is not None
    }
    overall = stats.overall.ci
    samples = []
    for sample in comparison.samples:
        intervals: dict[str, tuple[float, float]] = {}
        if sample.reward_delta is not None:
            if overall is not None:
                intervals["overall"] = (overall.low, overall.high)
            for key in stats.slices:
                for value in slice_values(sample.metadata.get(key)):
                    if f"{key}={value}" in by_slice:
                        intervals[f"{key}={value}"] = by_slice[f"{key}={value}"]
        samples.append(sample.model_copy(update={"delta_ci": intervals}))
    return comparison.model_copy(update={"samples": samples})
