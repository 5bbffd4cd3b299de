"""Base vs tuned: a synthetic pair of trajectory files with known deltas gives known counts."""

from __future__ import annotations

from typing import Any

import pytest

from rollout.compare import (
    SampleComparison,
    SideResult,
    SliceStats,
    compare,
    shown_slices,
    slice_stats,
    spread,
    worst_slice,
)
from rollout.trajectory import EpisodeMetrics, Trajectory, TrajectoryError

# row id, task type, difficulty, base reward, tuned reward (None = the episode failed)
ROWS = [
    ("a", "lookup", "easy", 0.0, 1.0),  # improved
    ("b", "lookup", "easy", 1.0, 1.0),  # unchanged, solved
    ("c", "lookup", "hard", 0.0, 0.0),  # unchanged, never solved
    ("d", "ratio", "hard", 1.0, 0.0),  # regressed by 1
    ("e", "ratio", "medium", 0.5, 0.25),  # regressed by 0.25
    ("f", "ratio", "medium", 0.0, 0.5),  # improved
    ("g", "ratio", "easy", 1.0, None),  # tuned side failed: not compared
]


def side(reward: float | None, row: str, task: str, difficulty: str, calls: int) -> Trajectory:
    return Trajectory(
        row_id=row,
        group_id=row,
        sample_index=0,
        env_id="e",
        policy_version="v",
        messages=[],
        reward=reward,
        metrics=EpisodeMetrics(tool_calls=calls),
        metadata={"task_type": task, "difficulty": difficulty, "recipe": {"x": 1}},
        error=None if reward is not None else TrajectoryError(kind="tool", message="down"),
    )


@pytest.fixture
def pair() -> tuple[list[Trajectory], list[Trajectory]]:
    base = [side(b, r, t, d, 1) for r, t, d, b, _ in ROWS]
    tuned = [side(u, r, t, d, 3) for r, t, d, _, u in ROWS]
    return base, tuned


def test_counts_and_means(pair: tuple[list[Trajectory], list[Trajectory]]) -> None:
    result = compare(*pair)
    s = result.summary
    assert (s.rows, s.compared, s.failed) == (7, 6, 1)
    assert (s.improved, s.regressed, s.unchanged_solved, s.unchanged_unsolved) == (2, 2, 1, 1)
    assert s.base_reward == pytest.approx(2.5 / 6)
    assert s.tuned_reward == pytest.approx(2.75 / 6)
    assert s.reward_delta == pytest.approx(0.25 / 6)
    assert s.tool_calls_delta == pytest.approx(2.0)
    assert [r.id for r in result.regressions()] == ["d", "e"]  # worst first


def test_slices_and_their_spread(pair: tuple[list[Trajectory], list[Trajectory]]) -> None:
    result = compare(*pair)
    assert set(result.slices) == {"task_type", "difficulty"}  # the dict-valued key is skipped
    by_task = {s.value: s for s in result.slices["task_type"]}
    assert by_task["lookup"].n == 3 and by_task["lookup"].reward_delta == pytest.approx(1 / 3)
    assert by_task["ratio"].n == 3  # g is not compared
    assert by_task["ratio"].reward_delta == pytest.approx((-1.0 - 0.25 + 0.5) / 3)
    assert (by_task["ratio"].improved, by_task["ratio"].regressed) == (1, 2)
    by_difficulty = {s.value: s.reward_delta for s in result.slices["difficulty"]}
    assert by_difficulty == pytest.approx({"easy": 0.5, "hard": -0.5, "medium": 0.125})
    assert result.skipped_slice_keys == {"recipe": "dict values"}
    # Slices of 3 rows are below the default minimum of 5: no spread is claimed from them.
    assert result.slice_spread == {"task_type": None, "difficulty": None}
    small = compare(*pair, min_slice_rows=3)
    assert small.slice_spread["task_type"] == pytest.approx(1 / 3 + 0.25)
    assert small.slice_spread["difficulty"] is None  # 2 rows each
    assert compare(*pair, min_slice_rows=2).slice_spread["difficulty"] == pytest.approx(1.0)


def test_several_attempts_are_averaged_per_row() -> None:
    base = [side(0.0, "a", "t", "easy", 0), side(1.0, "a", "t", "easy", 0)]
    base[1].sample_index = 1
    tuned = [side(1.0, "a", "t", "easy", 0)]
    (sample,) = compare(base, tuned).samples
    assert sample.base.reward == 0.5 and sample.base.attempts == 2
    assert sample.outcome == "improved"


def attempts(row: str, rewards: list[float | None], metadata: dict[str, Any]) -> list[Trajectory]:
    out = [side(r, row, "t", "easy", 0) for r in rewards]
    for index, trajectory in enumerate(out):
        trajectory.sample_index = index
        trajectory.metadata = metadata
    return out


def test_pass_at_1_pass_at_k_and_headroom_per_side() -> None:
    # base: 5 successes in 12 attempts, 2 of 3 rows solved once; tuned: 7 in 12, all 3 rows.
    base_rewards = [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    tuned_rewards = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    base = [t for i, r in enumerate(base_rewards) for t in attempts(f"r{i}", list(r), {})]
    tuned = [t for i, r in enumerate(tuned_rewards) for t in attempts(f"r{i}", list(r), {})]
    s = compare(base, tuned).summary
    assert (s.base_pass.k, s.base_pass.rows) == (4, 3)
    assert s.base_pass.pass_at_1 == pytest.approx(5 / 12)
    assert s.base_pass.pass_at_k == pytest.approx(2 / 3)
    assert s.base_pass.headroom == pytest.approx(1 / 4)
    assert s.tuned_pass.pass_at_1 == pytest.approx(7 / 12)
    assert s.tuned_pass.pass_at_k == pytest.approx(1.0)
    assert s.tuned_pass.headroom == pytest.approx(5 / 12)
    assert s.base_pass.pass_at_1 == pytest.approx(s.base_reward)  # 0/1 rewards: the same figure


def test_pass_rates_use_the_solved_threshold_and_only_compared_rows() -> None:
    base = attempts("a", [0.6, 0.4], {}) + attempts("b", [1.0, 1.0], {})
    tuned = attempts("a", [0.6, 0.6], {}) + attempts("b", [None, None], {})  # b: not compared
    s = compare(base, tuned, solved_threshold=0.5).summary
    assert (s.base_pass.rows, s.base_pass.pass_at_1, s.base_pass.pass_at_k) == (1, 0.5, 1.0)
    assert (s.tuned_pass.pass_at_1, s.tuned_pass.headroom) == (1.0, 0.0)
    strict = compare(base, tuned, solved_threshold=0.7).summary
    assert (strict.base_pass.pass_at_1, strict.base_pass.pass_at_k) == (0.0, 0.0)


# Rows shaped like the demo's: lists of companies, periods and metrics; one source; a recipe.
DEMO_ROWS: list[tuple[str, list[str], str, float, float]] = [
    ("q1", ["Northwind Energy"], "2024-Q3", 0.0, 1.0),
    ("q2", ["Northwind Energy", "Contoso Foods"], "2024-Q3", 1.0, 0.0),
    ("q3", ["Contoso Foods"], "2024-Q2", 0.0, 0.0),
    ("q4", ["Contoso Foods", "Contoso Foods"], "2024-Q2", 1.0, 1.0),  # a repeat counts once
    ("q5", [], "2024-Q2", 0.0, 1.0),  # no company: in no company slice
]


def demo_metadata(companies: list[str], period: str) -> dict[str, Any]:
    return {
        "companies": companies,
        "periods": [period],
        "metrics": ["operating_income"],
        "task_type": "lookup",
        "difficulty": "easy",
        "source": "synth",
        "recipe": {"template": "lookup", "seed": 3},
    }


def demo_pair() -> tuple[list[Trajectory], list[Trajectory]]:
    base, tuned = [], []
    for row, companies, period, b, t in DEMO_ROWS:
        base += attempts(row, [b], demo_metadata(companies, period))
        tuned += attempts(row, [t], demo_metadata(companies, period))
    return base, tuned


def test_list_metadata_slices_by_item_with_multi_membership() -> None:
    result = compare(*demo_pair(), min_slice_rows=1)
    assert set(result.slices) == {"companies", "periods"}
    assert result.list_slice_keys == ["companies", "periods"]
    companies = {s.value: s for s in result.slices["companies"]}
    assert {v: s.n for v, s in companies.items()} == {"Contoso Foods": 3, "Northwind Energy": 2}
    assert sum(s.n for s in companies.values()) == 5 > 4  # q2 counts twice, q5 not at all
    assert companies["Northwind Energy"].reward_delta == pytest.approx((1.0 - 1.0) / 2)
    assert companies["Contoso Foods"].reward_delta == pytest.approx(-1.0 / 3)
    assert (companies["Contoso Foods"].improved, companies["Contoso Foods"].regressed) == (0, 1)
    periods = {s.value: s.n for s in result.slices["periods"]}
    assert periods == {"2024-Q2": 3, "2024-Q3": 2}
    assert result.skipped_slice_keys == {
        "difficulty": "one value only ('easy')",
        "metrics": "one value only ('operating_income')",
        "recipe": "dict values",
        "source": "one value only ('synth')",
        "task_type": "one value only ('lookup')",
    }


def test_keys_with_too_many_values_are_skipped_and_said_so() -> None:
    base = [t for i in range(6) for t in attempts(f"r{i}", [0.0], {"id": f"r{i}", "n": i % 2})]
    tuned = [t for i in range(6) for t in attempts(f"r{i}", [1.0], {"id": f"r{i}", "n": i % 2})]
    samples = compare(base, tuned).samples
    slicing = slice_stats(samples, max_values=5)
    assert set(slicing.slices) == {"n"}
    assert slicing.skipped == {"id": "6 distinct values (more than 5 is not readable)"}
    assert set(slice_stats(samples, max_values=6).slices) == {"id", "n"}


def stats(value: str, n: int, delta: float) -> SliceStats:
    return SliceStats(
        key="k", value=value, n=n, base_reward=0.5, tuned_reward=0.5 + delta,
        reward_delta=delta, improved=0, regressed=0,
    )  # fmt: skip


def test_spread_and_worst_count_only_slices_big_enough() -> None:
    slices = [stats("big-good", 9, 0.5), stats("big-bad", 6, -0.25), stats("tiny", 1, -1.0)]
    assert spread(slices, 5) == pytest.approx(0.75)  # the 1-row slice at -1.0 does not count
    assert spread(slices, 1) == pytest.approx(1.5)
    assert spread(slices, 7) is None  # one slice is not a spread
    assert worst_slice(slices, 5) is slices[1]
    few = [stats("a", 1, 0.0), stats("b", 2, -0.1)]
    assert worst_slice(few, 5) is few[1]  # none is big enough: the worst of all
    assert worst_slice([], 5) is None


def test_many_values_show_the_most_populated_and_the_worst() -> None:
    slices = [stats(f"v{i:02}", 20 - i, 0.1) for i in range(15)]
    slices.append(stats("rare-but-broken", 5, -0.5))  # 16 values; it has the fewest rows
    shown = shown_slices(slices, min_rows=5, top=12)
    assert [s.value for s in shown] == [f"v{i:02}" for i in range(12)] + ["rare-but-broken"]
    assert shown_slices(slices[:12], min_rows=5, top=12) == slices[:12]  # few: all, in order
    assert len(shown_slices(slices, min_rows=10, top=12)) == 12  # the worst of the big is in


def test_only_text_and_whole_number_list_items_make_slices() -> None:
    side_result = SideResult(reward=1.0, tool_calls=0.0, attempts=1, failed=0, successes=1)
    sample = SampleComparison(
        id="x", metadata={"tags": ["a", "b", 3, 2.5, {"c": 1}]}, base=side_result,
        tuned=side_result, reward_delta=0.0, tool_calls_delta=0.0, outcome="unchanged_solved",
    )  # fmt: skip
    # Text and whole-number items slice; a float or a dict item does not.
    assert [s.value for s in slice_stats([sample]).slices["tags"]] == ["3", "a", "b"]
