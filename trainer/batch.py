"""From trajectory groups to padded training tensors.

Each trajectory contributes its token-exact segments (see rollout.trajectory), every one
carrying the trajectory's group-relative advantage. Failed episodes have no reward and are left
out; groups whose rewards are all equal carry no signal and are counted, not trained on, and
so are signal groups beyond `max_groups` (a step that refilled may have played more). A group
its judge could not score is left out whole and counted apart (`judge_failed_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout.trajectory import TrajectoryGroup
from trainer.loss import group_advantages


@dataclass
class TrainSequence:
    ids: list[int]
    mask: list[int]  # 1 where the model generated the token
    behaviour_logprobs: list[float]  # what the inference backend reported (diagnostics)
    advantage: float


@dataclass
class BatchStats:
    groups: int = 0
    zero_signal_groups: int = 0
    signal_groups: int = 0  # trained on: at most max_groups
    failed_episodes: int = 0
    truncated_sequences: int = 0
    judge_failed_groups: int = 0  # the judge gave no scores: out of the update, not zero-signal


def build_sequences(
    groups: list[TrajectoryGroup],
    *,
    scale_rewards: bool,
    max_tokens: int,
    max_groups: int | None = None,
) -> tuple[list[TrainSequence], BatchStats]:
    """Sequences from the first `max_groups` groups with signal (all, when None), in `groups`'
    order: the same groups on every run over the same trajectories."""
    stats = BatchStats(groups=len(groups))
    sequences: list[TrainSequence] = []
    for group in groups:
        scored = group.scored
        stats.failed_episodes += sum(
            1 for t in group.trajectories if t.failed and not t.judge_failed
        )
        if group.judge_failed:
            stats.judge_failed_groups += 1
            continue
        if not group.has_signal:
            stats.zero_signal_groups += 1
            continue
        if max_groups is not None and stats.signal_groups >= max_groups:
            continue
        stats.signal_groups += 1
        advantages = group_advantages(group.rewards, scale=scale_rewards)
        for trajectory, advantage in zip(scored, advantages, strict=True):
            for segment in trajectory.segments():
                if len(segment.ids) > max_tokens:
                    stats.truncated_sequences += 1
                ids, mask = segment.ids[:max_tokens], segment.mask[:max_tokens]
                if 1 not in mask:
                    continue
                sequences.append(TrainSequence(ids, mask, segment.logprobs[:max_tokens], advantage))
    return sequences, stats


@dataclass
class Batch:
    ids: torch.Tensor  # (batch, seq)
    attention: torch.Tensor  # (batch, seq)
    mask: torch.Tensor  # (batch, seq - 1): loss on token t+1 predicted at t
    behaviour: torch.Tensor  # (batch, seq - 1)
    advantages: torch.Tensor  # (batch,)

    @property
    def tokens(self) -> int:
        return int(self.attention.sum())


def collate(sequences: list[TrainSequence], pad_id: int, device: str = "cpu") -> Batch:
    width = max(len(s.ids) for s in sequences)

    def padded(rows: list[list[float]] | list[list[int]], value: float) -> list[list[float]]:
        return [list(row) + [value] * (width - len(row)) for row in rows]

    ids = torch.tensor(padded([s.ids for s in sequences], pad_id), dtype=torch.long)  # (b, s)
    attention = torch.tensor(padded([[1] * len(s.ids) for s in sequences], 0))  # (b, s)
    mask = torch.tensor(padded([s.mask for s in sequences], 0))[:, 1:]  # (b, s-1)
    behaviour = torch.tensor(padded([s.behaviour_logprobs for s in sequences], 0.0))[:, 1:]
    advantages = torch.tensor([s.advantage for s in sequences], dtype=torch.float32)  # (b,)
    return Batch(
        ids.to(device),
        attention.long().to(device),
        mask.to(device),
        behaviour.to(device),
        advantages.to(device),
    )
