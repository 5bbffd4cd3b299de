"""The release gate on synthetic pairs with known outcomes, and gate files that are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from _release_kit import cohort_pair

from rollout.compare import compare
from rollout.forgetting import (
    Forgetting,
    FormatChecks,
    FormatStats,
    KLResult,
    ProbeResult,
)
from rollout.gate import Gate, GateConfigError, GateRules, check_keys, load_gate, parse_gate
from rollout.release import release_check, release_lines
from rollout.stats import Interval, Statistics, compute_statistics

ROOT = Path(__file__).resolve().parents[2]


def stats_of(cohorts: dict[str, tuple[float, float]], seed: int = 0) -> Statistics:
    return compute_statistics(compare(*cohort_pair(cohorts, seed=seed)), seed=seed)


def gate(**rules: object) -> Gate:
    return Gate("gate.yaml", GateRules.model_validate(rules))


def formats(base_rate: float, tuned_rate: float) -> list[FormatChecks]:
    def stats(rate: float) -> FormatStats:
        return FormatStats(episodes=100, calls=200, flawed_episodes=round(rate * 100))

    return [FormatChecks(set="main", base=stats(base_rate), tuned=stats(tuned_rate))]


def probe(base: float, tuned: float) -> ProbeResult:
    return ProbeResult(
        env_id="toolgym/TatQA-v0", rows=50, base_reward=base, tuned_reward=tuned,
        ci=Interval(low=tuned - base - 0.05, high=tuned - base + 0.05),
    )  # fmt: skip


FULL = {
    "overall_delta_lower_bound_min": 0.0,
    "slice_delta_lower_bound_min": -0.1,
    "regression_flips_max": 10,
    "probe_reward_drop_max": 0.05,
    "format_error_rate_increase_max": 0.0,
    "cohort_spread_increase_max": 0.1,
}


def test_the_example_gate_file_loads() -> None:
    example = load_gate(ROOT / "configs" / "gate-example.yaml")
    assert example.rules.overall_delta_lower_bound_min == 0.0
    assert example.rules.slice_keys == ["difficulty", "task_type"]
    assert set(example.rules.rules()) >= {"probe_reward_drop_max", "regression_flips_max"}


def test_the_gate_passes_an_improvement() -> None:
    stats = stats_of({"easy": (0.4, 0.8), "medium": (0.3, 0.7), "hard": (0.2, 0.6)})
    forgetting = Forgetting(probe=probe(0.5, 0.49), formats=formats(0.1, 0.05))
    release = release_check(stats, forgetting, gate(**FULL))
    assert release.gate is not None and release.gate.passed, release_lines(release)
    assert release.exit_code == 0
    assert release_lines(release)[-len(FULL) - 1] == "gate gate.yaml: PASS"


def test_the_gate_fails_a_regression_hidden_in_one_slice_while_the_mean_rose() -> None:
    stats = stats_of({"easy": (0.35, 0.95), "medium": (0.35, 0.95), "hard": (0.4, 0.1)})
    assert stats.overall.ci is not None and stats.overall.ci.low > 0  # the mean rose, surely
    forgetting = Forgetting(probe=probe(0.5, 0.5), formats=formats(0.1, 0.1))
    release = release_check(stats, forgetting, gate(**FULL))
    assert release.gate is not None and release.exit_code == 1
    failed = {r.rule: r for r in release.gate.failures()}
    assert set(failed) >= {"slice_delta_lower_bound_min", "cohort_spread_increase_max"}
    hidden = failed["slice_delta_lower_bound_min"]
    assert hidden.detail.startswith("difficulty=hard delta -0.3")  # the slice behind it
    assert hidden.figure is not None and hidden.figure < -0.1
    assert "overall_delta_lower_bound_min" not in failed
    text = "\n".join(release_lines(release))
    assert "gate gate.yaml: FAIL" in text and "FAIL slice_delta_lower_bound_min" in text


def test_the_gate_fails_on_a_probe_drop_and_on_a_probe_never_played() -> None:
    stats = stats_of({"easy": (0.4, 0.8), "hard": (0.2, 0.6)})
    dropped = release_check(
        stats, Forgetting(probe=probe(0.6, 0.4), formats=formats(0.1, 0.1)), gate(**FULL)
    )
    assert dropped.gate is not None
    (failure,) = dropped.gate.failures()
    assert failure.rule == "probe_reward_drop_max" and failure.figure == pytest.approx(0.2)
    assert "toolgym/TatQA-v0: reward 0.600 -> 0.400 over 50 rows" in failure.detail
    missing = release_check(stats, Forgetting(probe_note="not asked for"), gate(**FULL))
    assert missing.gate is not None
    rules = {r.rule: r for r in missing.gate.failures()}
    assert rules["probe_reward_drop_max"].detail == "not measured: not asked for"
    assert rules["format_error_rate_increase_max"].figure is None


def test_more_regression_flips_than_allowed_fail_naming_the_rows() -> None:
    stats = stats_of({"easy": (0.9, 0.1)})
    release = release_check(stats, Forgetting(), gate(regression_flips_max=2))
    assert release.gate is not None
    (failure,) = release.gate.failures()
    assert failure.figure is not None and failure.figure > 2
    assert failure.rows == [f.id for f in stats.regression_flips()]
    assert failure.detail.startswith(f"{len(failure.rows)} rows went pass -> fail: ")


def test_format_errors_and_kl_rules() -> None:
    stats = stats_of({"easy": (0.4, 0.8)})
    worse = Forgetting(formats=formats(0.05, 0.2), kl=KLResult(value=0.8, tokens=10))
    release = release_check(stats, worse, gate(format_error_rate_increase_max=0.0, kl_max=0.5))
    assert release.gate is not None
    assert [r.rule for r in release.gate.failures()] == [
        "format_error_rate_increase_max",
        "kl_max",
    ]
    served = Forgetting(formats=formats(0.1, 0.1), kl=KLResult(unavailable="served policies"))
    unmeasured = release_check(stats, served, gate(kl_max=0.5))
    assert unmeasured.gate is not None and not unmeasured.gate.passed
    assert unmeasured.gate.results[0].detail == "not measured: served policies"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("overall_delta_lower_bound_min: 0\nmax_regressions: 3\n", "unknown rule 'max_regressions' (valid rules: overall_delta_lower_bound_min, slice_delta_lower_bound_min, "),  # noqa: E501
        ("regression_flips_max: many\n", "regression_flips_max: Input should be a valid integer"),
        ("slice_keys: [difficulty]\n", "names no rule (valid rules: "),
        ("- 1\n", "expected a mapping of rules"),
        ("a: [\n", "gate gate.yaml: "),
    ],
)  # fmt: skip
def test_a_gate_file_that_cannot_work_is_refused_in_one_line(text: str, said: str) -> None:
    with pytest.raises(GateConfigError) as caught:
        parse_gate(text, "gate.yaml")
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_an_unknown_metadata_key_is_refused_listing_the_valid_ones() -> None:
    chosen = gate(slice_delta_lower_bound_min=-0.1, slice_keys=["difficulty", "dificulty"])
    with pytest.raises(GateConfigError, match=r"unknown metadata key 'dificulty' \(valid: "):
        check_keys(chosen, {"difficulty", "task_type", "source"})
    check_keys(gate(slice_delta_lower_bound_min=-0.1, slice_keys=["source"]), {"source"})
