"""Synthetic base/tuned trajectory pairs with known outcomes, for the release-gate tests."""

from __future__ import annotations

import random
from typing import Any

from rollout.trajectory import EpisodeMetrics, Trajectory


def episodes(
    row: str, rewards: list[float], metadata: dict[str, Any], side: str = "base"
) -> list[Trajectory]:
    """One scored trajectory per reward: the row's attempts on one side."""
    return [
        Trajectory(
            row_id=row,
            group_id=row,
            sample_index=index,
            env_id="toolgym/FilingsQA-v0",
            policy_version=side,
            seed=index,
            messages=[{"role": "user", "content": f"question {row}"}],
            answer=f"answer {row}",
            reward=reward,
            metrics=EpisodeMetrics(turns=1, terminated=True),
            metadata=metadata,
        )
        for index, reward in enumerate(rewards)
    ]


def draws(rng: random.Random, p: float, attempts: int) -> list[float]:
    return [1.0 if rng.random() < p else 0.0 for _ in range(attempts)]


def cohort_pair(
    cohorts: dict[str, tuple[float, float]],
    *,
    rows_per_cohort: int = 30,
    attempts: int = 4,
    seed: int = 0,
    key: str = "difficulty",
) -> tuple[list[Trajectory], list[Trajectory]]:
    """Rows in cohorts of `key`; each cohort's attempts succeed with (base p, tuned p)."""
    rng = random.Random(seed)
    base: list[Trajectory] = []
    tuned: list[Trajectory] = []
    for value, (p_base, p_tuned) in cohorts.items():
        for i in range(rows_per_cohort):
            row, metadata = f"{value}-{i:03}", {key: value, "source": "synth"}
            base += episodes(row, draws(rng, p_base, attempts), metadata, "base")
            tuned += episodes(row, draws(rng, p_tuned, attempts), metadata, "tuned")
    return base, tuned
