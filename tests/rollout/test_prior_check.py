"""The prior check's buckets and verdicts."""

from __future__ import annotations

from rollout.prior_check import prior_check
from rollout.trajectory import Trajectory, TrajectoryError, TrajectoryGroup


def group(row: str, rewards: list[float | None]) -> TrajectoryGroup:
    members = [
        Trajectory(
            row_id=row,
            group_id=row,
            sample_index=i,
            env_id="e",
            policy_version="base",
            messages=[],
            reward=r,
            error=None if r is not None else TrajectoryError(kind="tool", message="down"),
        )
        for i, r in enumerate(rewards)
    ]
    return TrajectoryGroup(row, row, members)


def test_buckets_band_and_a_learnable_verdict() -> None:
    groups = [
        group("always", [1.0, 1.0, 1.0, 1.0]),
        group("never", [0.0, 0.0, 0.0, 0.0]),
        group("half", [1.0, 0.0, 1.0, 0.0]),
        group("quarter", [1.0, 0.0, 0.0, 0.5]),  # 0.5 counts as a success at threshold 0.5
        group("failed", [None, 1.0, 0.0, 0.0]),
    ]
    result = prior_check(groups)
    assert (result.always, result.sometimes, result.never) == (1, 3, 1)
    assert result.in_band == 3
    assert result.signal_share == 3 / 5
    assert result.failed_episodes == 1
    assert result.learnable
    assert "RL has something to learn" in result.verdict
    outcome = {o.row_id: o for o in result.outcomes}["failed"]
    assert (outcome.attempts, outcome.successes) == (3, 1)


def test_a_policy_that_never_succeeds_is_told_to_warm_start() -> None:
    result = prior_check([group(f"r{i}", [0.0] * 4) for i in range(9)] + [group("x", [1, 0])])
    assert not result.learnable
    assert "Warm-start" in result.verdict
    assert "too hard" in result.report()


def test_a_policy_that_always_succeeds_is_too_easy() -> None:
    result = prior_check([group(f"r{i}", [1.0] * 4) for i in range(10)])
    assert not result.learnable
    assert "too easy" in result.verdict
