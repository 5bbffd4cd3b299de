"""Before training: does the policy sometimes succeed? RL learns only from rows it sometimes gets.

K rows, N attempts each. A row the policy always solves or never solves gives every attempt
the same reward: a group-relative advantage of zero, nothing to learn. The share of rows whose
success rate sits inside the signal band is what GRPO can work with. Success is the grader's
reward against a reference answer, so rows without one (generated tasks may lack it) are left
out and counted.

GRPO sharpens what the policy can sometimes do, so the most it can hope to win on these rows is
about the headroom pass@N - pass@1 (see rollout.summary.PassRates). `min_headroom` turns that
into a gate: below it, the rows are judged not worth training on.

    run = await run_prior_check(pool, spec, RolloutSettings(group_size=8, seed=0), rows=32)
    run.result.learnable, run.report()
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from rollout.engine import RolloutResult, RolloutSettings, run_rollouts
from rollout.policy_spec import PolicySpec, open_policy
from rollout.summary import PassRates, RolloutSummary, pass_rates
from rollout.trajectory import TrajectoryGroup

if TYPE_CHECKING:  # the pool's module loads every environment: only its type is needed here
    from rollout.environments import EnvPool

MIN_SIGNAL_SHARE = 0.25  # below this, most of each batch would carry no gradient


class RowOutcome(BaseModel):
    row_id: str
    attempts: int
    successes: int
    success_rate: float
    mean_reward: float


class PriorCheck(BaseModel):
    rows: int
    attempts_per_row: int
    success_threshold: float
    band: tuple[float, float]
    always: int
    sometimes: int
    never: int
    in_band: int
    signal_share: float
    failed_episodes: int
    pass_at_1: float  # expected success of one attempt (mean of the rows' success rates)
    pass_at_k: float  # k = attempts_per_row: share of rows solved at least once
    headroom: float  # pass_at_k - pass_at_1: about the most RL can win on these rows
    min_headroom: float | None = None  # the gate asked for, if any
    # Rows left out because they have no reference_answer: the grader cannot say whether an
    # attempt at them succeeded (a RULER judge scores them, relative to each other, in training).
    unlabelled: int = 0
    verdict: str
    learnable: bool
    outcomes: list[RowOutcome] = Field(default_factory=list)

    def report(self) -> str:
        low, high = self.band
        return "\n".join(
            [
                f"rows {self.rows} x {self.attempts_per_row} attempts "
                f"(success = reward >= {self.success_threshold:g})",
                *self._left_out(),
                f"  always    {self.always}",
                f"  sometimes {self.sometimes}",
                f"  never     {self.never}",
                f"  in the signal band ({low:.0%}-{high:.0%} success): {self.in_band} "
                f"= {self.signal_share:.0%} of rows",
                f"  failed episodes (not counted): {self.failed_episodes}",
                f"pass@1 {self.pass_at_1:.3f}  pass@{self.attempts_per_row} {self.pass_at_k:.3f}  "
                f"headroom {self.headroom:.3f} (the most RL can hope to win on these rows)",
                f"verdict: {self.verdict}",
            ]
        )

    def _left_out(self) -> list[str]:
        if not self.unlabelled:
            return []
        return [
            f"  left out: {self.unlabelled} row(s) without a reference_answer (the grader "
            "cannot score them; a RULER judge does in training)"
        ]


def _verdict(always: float, never: float, share: float) -> tuple[str, bool]:
    if share >= MIN_SIGNAL_SHARE:
        return (
            f"RL has something to learn: {share:.0%} of rows succeed sometimes "
            "(their groups carry a learning signal)",
            True,
        )
    if never >= 0.7:
        return (
            "too hard for now: the policy almost never succeeds. Warm-start it (SFT on "
            "demonstration episodes), use a stronger base model, or start with easier rows",
            False,
        )
    if always >= 0.7:
        return "too easy: the policy already solves almost everything; use harder rows", False
    return (
        f"little signal: only {share:.0%} of rows succeed sometimes. Raise the attempts per "
        "row or mix in rows of another difficulty",
        False,
    )


def _headroom_verdict(rates: PassRates, min_headroom: float) -> str:
    return (
        f"too little headroom: {rates.headroom:.3f} (pass@{rates.k} {rates.pass_at_k:.3f} - "
        f"pass@1 {rates.pass_at_1:.3f}) is below the minimum of {min_headroom:.3f} asked for, "
        "and RL can win at most about that much on these rows"
    )


def prior_check(
    groups: list[TrajectoryGroup],
    *,
    success_threshold: float = 0.5,
    band: tuple[float, float] = (0.1, 0.9),
    min_headroom: float | None = None,
) -> PriorCheck:
    """Judge the groups; with `min_headroom`, a headroom below it also makes them unlearnable."""
    outcomes = []
    failed = 0
    for group in groups:
        failed += len(group.trajectories) - len(group.scored)
        rewards = group.rewards
        if not rewards:
            continue
        successes = sum(1 for r in rewards if r >= success_threshold)
        outcomes.append(
            RowOutcome(
                row_id=group.row_id,
                attempts=len(rewards),
                successes=successes,
                success_rate=successes / len(rewards),
                mean_reward=sum(rewards) / len(rewards),
            )
        )
    count = len(outcomes)
    always = sum(1 for o in outcomes if o.success_rate == 1.0)
    never = sum(1 for o in outcomes if o.success_rate == 0.0)
    low, high = band
    in_band = sum(1 for o in outcomes if low <= o.success_rate <= high)
    share = in_band / count if count else 0.0
    verdict, learnable = _verdict(always / max(count, 1), never / max(count, 1), share)
    rates = pass_rates((o.successes, o.attempts) for o in outcomes)
    if min_headroom is not None and rates.headroom < min_headroom:
        # Said first when the buckets looked fine; after their advice when they did not.
        gate = _headroom_verdict(rates, min_headroom)
        verdict, learnable = (gate if learnable else f"{verdict}; and {gate}"), False
    if not count:
        verdict, learnable = "no row could be scored: every episode failed (see errors)", False
    return PriorCheck(
        rows=count,
        attempts_per_row=max((o.attempts for o in outcomes), default=0),
        success_threshold=success_threshold,
        band=band,
        always=always,
        sometimes=count - always - never,
        never=never,
        in_band=in_band,
        signal_share=share,
        failed_episodes=failed,
        pass_at_1=rates.pass_at_1,
        pass_at_k=rates.pass_at_k,
        headroom=rates.headroom,
        min_headroom=min_headroom,
        verdict=verdict,
        learnable=learnable,
        outcomes=outcomes,
    )


@dataclass(frozen=True)
class PriorCheckRun:
    """A prior check as played: the rollout (its trajectories and summary) and the verdict."""

    rollout: RolloutResult
    result: PriorCheck

    @property
    def summary(self) -> RolloutSummary:
        return self.rollout.summary

    def report(self) -> str:
        """What `toolgym prior-check` prints: the rollout's table, then the buckets."""
        return f"{self.summary.table()}\n\n{self.result.report()}"


async def run_prior_check(
    pool: EnvPool,
    spec: PolicySpec,
    settings: RolloutSettings,
    *,
    rows: int,
    threshold: float = 0.5,
    min_headroom: float | None = None,
    out: Path | None = None,
) -> PriorCheckRun:
    """`rows` rows drawn with `settings.seed`, `settings.group_size` attempts each, judged
    (with `min_headroom`, a headroom below it is a verdict of its own: see `prior_check`).

    The trajectories are kept in `out` when given (a rerun resumes it), else in a scratch file
    that is deleted. The caller owns `pool`; the policy is opened and closed here.
    """
    from rollout.environments import labelled_rows, sample_rows

    gradable = labelled_rows(pool.rows, "prior-check")
    chosen = sample_rows(gradable, rows, settings.seed)
    policy = open_policy(spec)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            path = out or Path(scratch) / "prior-check.jsonl"
            played = await run_rollouts(chosen, pool.factory(), policy, settings, path)
    finally:
        await policy.aclose()
    check = prior_check(played.groups(), success_threshold=threshold, min_headroom=min_headroom)
    unlabelled = len(pool.rows) - len(gradable)
    return PriorCheckRun(played, check.model_copy(update={"unlabelled": unlabelled}))
