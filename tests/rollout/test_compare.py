"""Base vs tuned: a synthetic pair of trajectory files with known deltas gives known counts."""

from __future__ import annotations

import pytest

from rollout.compare import compare
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
    assert result.slice_spread["task_type"] == pytest.approx(1 / 3 + 0.25)
    by_difficulty = {s.value: s.reward_delta for s in result.slices["difficulty"]}
    assert by_difficulty == pytest.approx({"easy": 0.5, "hard": -0.5, "medium": 0.125})


def test_several_attempts_are_averaged_per_row() -> None:
    base = [side(0.0, "a", "t", "easy", 0), side(1.0, "a", "t", "easy", 0)]
    base[1].sample_index = 1
    tuned = [side(1.0, "a", "t", "easy", 0)]
    (sample,) = compare(base, tuned).samples
    assert sample.base.reward == 0.5 and sample.base.attempts == 2
    assert sample.outcome == "improved"
