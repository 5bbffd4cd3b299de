"""What a rollout run amounted to: rewards, tool use, speed, failures; pass@1, pass@k.

Rewards are summarised over scored episodes only; failed ones are counted by kind, never
averaged in as zeros.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable

from pydantic import BaseModel

from rollout.trajectory import Trajectory, group_trajectories


class RewardStats(BaseModel):
    n: int
    mean: float
    std: float


class RolloutSummary(BaseModel):
    episodes: int
    scored: int
    failed: int
    errors: dict[str, int]  # by kind: policy, tool, timeout, grader
    reward: RewardStats
    reward_by_difficulty: dict[str, RewardStats]
    tool_calls_mean: float
    turns_mean: float
    completion_tokens: int
    token_mismatches: int  # turns whose prompt did not extend the previous sequence
    groups: int
    zero_signal_groups: int  # every attempt got the same reward: nothing to learn from
    episode_s_p50: float
    episode_s_p99: float
    wall_s: float  # this run (a resumed run counts only its own part)
    episodes_this_run: int
    episodes_per_s: float
    tokens_per_s: float  # generated tokens per second of this run

    def table(self) -> str:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        lines = [
            f"episodes        {self.episodes} ({self.scored} scored, {self.failed} failed)",
            f"reward          {self.reward.mean:.3f} ± {self.reward.std:.3f}",
        ]
        for difficulty, stats in sorted(self.reward_by_difficulty.items()):
            lines.append(f"  {difficulty:<13} {stats.mean:.3f} ± {stats.std:.3f}  (n={stats.n})")
        lines += [
            f"tool calls      {self.tool_calls_mean:.2f} per episode ({self.turns_mean:.2f} turns)",
            f"zero-signal     {self.zero_signal_groups} of {self.groups} groups",
            f"tokens          {self.completion_tokens} generated, {self.tokens_per_s:.1f} tok/s",
            f"throughput      {self.episodes_per_s:.2f} episodes/s "
            f"({self.episodes_this_run} in {self.wall_s:.1f}s)",
            f"episode time    p50 {self.episode_s_p50:.2f}s  p99 {self.episode_s_p99:.2f}s",
            f"token mismatch  {self.token_mismatches}",
            f"errors          {errors}",
        ]
        return "\n".join(lines)


class PassRates(BaseModel):
    """How often a policy succeeds in one attempt, and in k; the gap is what RL can win.

    pass@1 is the expected success of one attempt: the mean over rows of each row's success
    rate (per row rather than over all attempts pooled, so a row that lost episodes to failures
    weighs as much as the others and pass@k >= pass@1 holds on any rows). pass@k is the share of
    rows solved in at least one of their k attempts. GRPO sharpens what a policy can sometimes
    do, so headroom = pass@k - pass@1 is about the most it can raise pass@1 on these rows.
    """

    k: int  # attempts per row (the most any row had; a row with failed episodes has fewer)
    rows: int  # rows with at least one scored attempt
    pass_at_1: float
    pass_at_k: float
    headroom: float


def pass_rates(rows: Iterable[tuple[int, int]]) -> PassRates:
    """From (successes, scored attempts) per row; rows with no scored attempt are left out."""
    counted = [(successes, attempts) for successes, attempts in rows if attempts > 0]
    if not counted:
        return PassRates(k=0, rows=0, pass_at_1=0.0, pass_at_k=0.0, headroom=0.0)
    at_1 = statistics.fmean(successes / attempts for successes, attempts in counted)
    at_k = sum(1 for successes, _ in counted if successes > 0) / len(counted)
    return PassRates(
        k=max(attempts for _, attempts in counted),
        rows=len(counted),
        pass_at_1=at_1,
        pass_at_k=at_k,
        headroom=at_k - at_1,
    )


def reward_stats(rewards: Iterable[float]) -> RewardStats:
    values = list(rewards)
    if not values:
        return RewardStats(n=0, mean=0.0, std=0.0)
    return RewardStats(n=len(values), mean=statistics.fmean(values), std=statistics.pstdev(values))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summarize(
    trajectories: list[Trajectory],
    *,
    this_run: list[Trajectory] | None = None,
    wall_s: float = 0.0,
) -> RolloutSummary:
    """Rewards over every trajectory given; speed over `this_run`'s (all, when not given)."""
    run = trajectories if this_run is None else this_run
    scored = [t for t in trajectories if not t.failed and t.reward is not None]
    by_difficulty: dict[str, list[float]] = {}
    for t in scored:
        difficulty = str(t.metadata.get("difficulty", "unknown"))
        by_difficulty.setdefault(difficulty, []).append(t.reward or 0.0)
    groups = group_trajectories(trajectories)
    durations = [t.metrics.episode_s for t in trajectories]
    tokens = sum(t.metrics.completion_tokens for t in trajectories)
    run_tokens = sum(t.metrics.completion_tokens for t in run)
    wall = max(wall_s, 1e-9)
    return RolloutSummary(
        episodes=len(trajectories),
        scored=len(scored),
        failed=len(trajectories) - len(scored),
        errors=dict(Counter(t.error.kind for t in trajectories if t.error)),
        reward=reward_stats(t.reward or 0.0 for t in scored),
        reward_by_difficulty={k: reward_stats(v) for k, v in by_difficulty.items()},
        tool_calls_mean=statistics.fmean([t.metrics.tool_calls for t in scored] or [0]),
        turns_mean=statistics.fmean([t.metrics.turns for t in scored] or [0]),
        completion_tokens=tokens,
        token_mismatches=sum(t.token_mismatches for t in trajectories),
        groups=len(groups),
        zero_signal_groups=sum(1 for g in groups if g.scored and not g.has_signal),
        episode_s_p50=percentile(durations, 0.5),
        episode_s_p99=percentile(durations, 0.99),
        wall_s=wall_s,
        episodes_this_run=len(run),
        episodes_per_s=len(run) / wall if wall_s else 0.0,
        tokens_per_s=run_tokens / wall if wall_s else 0.0,
    )
