"""Before training: does the policy sometimes succeed? RL learns only from rows it sometimes gets.

K rows, N attempts each. A row the policy always solves or never solves gives every attempt
the same reward: a group-relative advantage of zero, nothing to learn. The share of rows whose
success rate sits inside the signal band is what GRPO can work with.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from rollout.trajectory import TrajectoryGroup

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
    verdict: str
    learnable: bool
    outcomes: list[RowOutcome] = Field(default_factory=list)

    def report(self) -> str:
        low, high = self.band
        return "\n".join(
            [
                f"rows {self.rows} x {self.attempts_per_row} attempts "
                f"(success = reward >= {self.success_threshold:g})",
                f"  always    {self.always}",
                f"  sometimes {self.sometimes}",
                f"  never     {self.never}",
                f"  in the signal band ({low:.0%}-{high:.0%} success): {self.in_band} "
                f"= {self.signal_share:.0%} of rows",
                f"  failed episodes (not counted): {self.failed_episodes}",
                f"verdict: {self.verdict}",
            ]
        )


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


def prior_check(
    groups: list[TrajectoryGroup],
    *,
    success_threshold: float = 0.5,
    band: tuple[float, float] = (0.1, 0.9),
) -> PriorCheck:
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
        verdict=verdict,
        learnable=learnable,
        outcomes=outcomes,
    )
