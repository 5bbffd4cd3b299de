"""Statistics that hold up: interval coverage, flips regressions first, cohort spread."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from _release_kit import cohort_pair, episodes

from rollout.compare import SampleComparison, SideResult, compare
from rollout.forgetting import Forgetting
from rollout.gate import Gate, GateRules
from rollout.release import release_check, statistics_lines
from rollout.report import write_report
from rollout.stats import (
    compute_statistics,
    estimate,
    paired_bootstrap,
    with_intervals,
)


def side(successes: int, attempts: int) -> SideResult:
    rate = successes / attempts
    return SideResult(reward=rate, tool_calls=0.0, attempts=attempts, failed=0, successes=successes)


def simulated(
    rng: random.Random, rows: int, attempts: int, effect: float
) -> list[SampleComparison]:
    """Rows whose base success probability is uniform in [0.1, 0.8] and whose tuned one is
    `effect` higher: the true mean difference of success rates is `effect` exactly."""
    samples = []
    for i in range(rows):
        p_base = rng.uniform(0.1, 0.8)
        b = sum(rng.random() < p_base for _ in range(attempts))
        t = sum(rng.random() < p_base + effect for _ in range(attempts))
        base, tuned = side(b, attempts), side(t, attempts)
        samples.append(
            SampleComparison(
                id=f"r{i}",
                base=base,
                tuned=tuned,
                reward_delta=(t - b) / attempts,
                tool_calls_delta=0.0,
                outcome="unchanged_solved",
            )
        )
    return samples


def test_the_interval_covers_the_true_difference_at_about_the_stated_rate() -> None:
    rng = random.Random(7)
    effect, hits, draws = 0.1, 0, 200
    for draw in range(draws):
        samples = simulated(rng, rows=60, attempts=4, effect=effect)
        found = estimate(samples, seed=draw, resamples=1000)
        assert found.ci is not None and found.n == 60
        hits += found.ci.covers(effect)
    coverage = hits / draws
    assert 0.90 <= coverage <= 0.99, coverage


def test_the_bootstrap_is_seeded_and_paired() -> None:
    base = np.array([0.0, 0.5, 1.0, 0.25, 0.75])
    tuned = base + 0.25  # every row moved by the same amount: pairing leaves no doubt
    ci = paired_bootstrap(base, tuned, seed=3)
    assert ci is not None and ci.low == pytest.approx(0.25) and ci.high == pytest.approx(0.25)
    noisy = np.array([0.0, 1.0, 0.0, 1.0, 0.5])
    assert paired_bootstrap(base, noisy, seed=3) == paired_bootstrap(base, noisy, seed=3)
    assert paired_bootstrap(base, noisy, seed=3) != paired_bootstrap(base, noisy, seed=4)
    assert paired_bootstrap(np.array([]), np.array([]), seed=0) is None


def test_flips_list_regressions_first_worst_first() -> None:
    meta = {"difficulty": "easy"}
    rows = {  # row: (base rewards, tuned rewards)
        "a": ([1, 1, 1, 0], [0, 0, 0, 1]),  # pass -> fail, 0.75 -> 0.25
        "b": ([1, 1, 0, 0], [0, 0, 0, 0]),  # a tie is not a pass: no flip
        "c": ([0, 0, 0, 0], [1, 1, 1, 1]),  # fail -> pass
        "d": ([1, 1, 1, 1], [0, 0, 0, 0]),  # pass -> fail, 1.0 -> 0.0: the worst
        "e": ([0, 0, 1, 0], [1, 1, 1, 0]),  # fail -> pass, 0.25 -> 0.75
    }
    base = [t for r, (b, _) in rows.items() for t in episodes(r, [float(x) for x in b], meta)]
    tuned = [t for r, (_, u) in rows.items() for t in episodes(r, [float(x) for x in u], meta)]
    comparison = compare(base, tuned)
    stats = compute_statistics(comparison)
    assert [(f.id, f.kind) for f in stats.flips] == [
        ("d", "pass_to_fail"), ("a", "pass_to_fail"), ("c", "fail_to_pass"), ("e", "fail_to_pass"),
    ]  # fmt: skip
    assert {s.id: s.flip for s in comparison.samples}["b"] is None
    assert "2 pass -> fail (worst first: d, a), 2 fail -> pass" in "\n".join(
        statistics_lines(stats)
    )


def test_a_spread_that_grew_is_flagged_even_when_the_mean_rose() -> None:
    cohorts = {"easy": (0.5, 0.95), "medium": (0.5, 0.9), "hard": (0.5, 0.2)}
    comparison = compare(*cohort_pair(cohorts, rows_per_cohort=20))
    stats = compute_statistics(comparison)
    assert stats.overall.delta > 0  # the mean rose
    (spread,) = stats.spreads
    assert spread.key == "difficulty" and spread.slices == 3
    assert spread.base is not None and spread.tuned is not None
    assert spread.tuned > spread.base and spread.grew
    assert "difficulty" in "\n".join(statistics_lines(stats)) and "GREW" in "\n".join(
        statistics_lines(stats)
    )


def test_slices_get_their_own_intervals_and_rows_carry_them() -> None:
    cohorts = {"easy": (0.3, 0.8), "hard": (0.6, 0.1)}
    comparison = compare(*cohort_pair(cohorts, rows_per_cohort=25))
    stats = compute_statistics(comparison, seed=5)
    by_value = {e.value: e for e in stats.slices["difficulty"]}
    assert by_value["easy"].n == by_value["hard"].n == 25
    assert by_value["easy"].ci is not None and by_value["easy"].ci.low > 0
    assert by_value["hard"].ci is not None and by_value["hard"].ci.high < 0
    annotated = with_intervals(comparison, stats)
    row = next(s for s in annotated.samples if s.metadata["difficulty"] == "hard")
    assert set(row.delta_ci) == {"overall", "difficulty=hard"}
    hard = by_value["hard"].ci
    assert row.delta_ci["difficulty=hard"] == (hard.low, hard.high)
    assert compute_statistics(comparison, seed=5) == stats  # seeded: the same figures again


def test_the_report_puts_the_gate_first_and_lists_flips_with_traces(tmp_path: Path) -> None:
    meta = {"difficulty": "easy"}
    rows = {"a": ([1, 1, 0], [0, 0, 1]), "d": ([1, 1, 1], [0, 0, 0]), "c": ([0, 0, 0], [1, 1, 1])}
    base = [t for r, (b, _) in rows.items() for t in episodes(r, [float(x) for x in b], meta)]
    tuned = [t for r, (_, u) in rows.items() for t in episodes(r, [float(x) for x in u], meta)]
    comparison = compare(base, tuned)
    stats = compute_statistics(comparison)
    rules = GateRules(regression_flips_max=0, slice_keys=["difficulty"])
    release = release_check(stats, Forgetting(), Gate("<gate>.yaml", rules))
    files = write_report(comparison, base, tuned, tmp_path, release=release)
    document = files.html.read_text()
    order = [
        document.index(heading)
        for heading in (
            "<h2>Release gate <span class=muted>&lt;gate&gt;.yaml</span></h2>",
            "<h2>Summary</h2>",
            "<h2>Is the difference real?</h2>",
            "<h2>Forgetting</h2>",
            "<h2>Flips pass → fail, worst first (2)</h2>",
            "<h2>Flips fail → pass (1)</h2>",
            "<h2>Slices</h2>",
        )
    ]
    assert order == sorted(order)
    assert "FAIL: 1 of 1 rules failed (exit code 1)" in document
    worse = document[order[4] : order[5]]
    assert worse.index('data-row="d"') < worse.index('data-row="a"')  # worst first
    assert worse.count('<div class="trace">') == 4  # both sides' traces of each row
