"""Trajectories: one episode as the model saw and produced it, token for token, and their groups.

A trajectory keeps each turn's prompt and completion token ids and logprobs exactly as the
policy backend reported them. The trainer consumes `segments()`: flat token sequences with a
mask of model-generated tokens, computed once per trajectory (the episode's end counts their
mismatches, the trainer reuses them). Each turn's prompt should extend the previous turn's prompt
plus completion; when it does not (a chat template that re-renders the assistant's message
differently from what was generated), the sequence is not patched up by re-tokenizing: a new
segment starts from that turn's own prompt, and the mismatch is counted. Every generated token
then appears exactly once, conditioned on exactly the tokens the model saw.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from rollout.policy import Turn

# "judge": the episode played, but its group's judge (RULER) gave no usable score. Such
# trajectories are not episode failures: the group is left out of training and counted apart,
# and a rerun over the same file asks the judge again instead of replaying the episodes.
ErrorKind = Literal["policy", "tool", "timeout", "grader", "episode", "judge"]


class TurnTokens(BaseModel):
    """One policy call: the ids it was conditioned on, the ids it produced, their logprobs."""

    model_config = ConfigDict(frozen=True)

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    model: str
    latency_s: float

    @classmethod
    def from_turn(cls, turn: Turn) -> TurnTokens:
        # Validation builds new lists (checked by a test): copying them first as well costs a
        # few percent of the engine's CPU per model call on long prompts.
        return cls(
            prompt_ids=turn.prompt_ids,
            completion_ids=turn.completion_ids,
            logprobs=turn.logprobs,
            finish_reason=turn.finish_reason,
            model=turn.model,
            latency_s=round(turn.latency_s, 4),
        )


class EpisodeMetrics(BaseModel):
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0  # calls flagged failed (transport's is_error, or the env's own refusal)
    prompt_tokens: int = 0  # last turn's prompt: the context length reached
    completion_tokens: int = 0  # summed over turns
    policy_s: float = 0.0
    tool_s: float = 0.0
    episode_s: float = 0.0
    terminated: bool = False  # answered
    truncated: bool = False  # a budget ran out


class TrajectoryError(BaseModel):
    kind: ErrorKind
    message: str


class _SegmentCache:
    """The segments of the turns they were computed from, kept off the record.

    It compares equal to any other cache: a derived value must not make two trajectories with
    the same fields unequal (pydantic compares private attributes too). The turns are checked
    by identity, so turns appended or replaced after a computation are never served stale.
    """

    def __init__(self) -> None:
        self._turns: list[TurnTokens] = []
        self._value: tuple[list[TokenSequence], int] | None = None

    def get(self, turns: list[TurnTokens]) -> tuple[list[TokenSequence], int]:
        fresh = len(turns) == len(self._turns) and all(
            a is b for a, b in zip(turns, self._turns, strict=True)
        )
        if self._value is None or not fresh:
            self._turns, self._value = list(turns), token_segments(turns)
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SegmentCache)

    __hash__ = None  # type: ignore[assignment]


class Trajectory(BaseModel):
    """One line of a trajectory JSONL file."""

    model_config = ConfigDict(extra="forbid")

    row_id: str
    group_id: str
    sample_index: int = Field(ge=0)
    env_id: str
    policy_version: str
    seed: int | None = None
    messages: list[dict[str, Any]]
    tools: list[str] = Field(default_factory=list)  # tool names offered
    # Tools that answered without their error flag set, as the episode counted them; None in
    # files written before the flag was recorded (the messages' text cannot tell).
    tools_used: list[str] | None = None
    turns: list[TurnTokens] = Field(default_factory=list)
    answer: str | None = None
    reward: float | None = None  # None when the episode failed: never a silent zero
    scores: dict[str, float] = Field(default_factory=dict)  # e.g. {"grader": 1.0, "ruler": 0.6}
    grade: dict[str, Any] | None = None  # the grader's verdict and details
    metrics: EpisodeMetrics = Field(default_factory=EpisodeMetrics)
    token_mismatches: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)  # the row's slicing keys
    error: TrajectoryError | None = None
    _segments: _SegmentCache = PrivateAttr(default_factory=_SegmentCache)

    @property
    def key(self) -> tuple[str, int]:
        return (self.group_id, self.sample_index)

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def judge_failed(self) -> bool:
        """Played, but the group's judge could not score it (see ErrorKind)."""
        return self.error is not None and self.error.kind == "judge"

    def segments(self) -> list[TokenSequence]:
        """The token-exact training sequences; computed once, treat them as read-only."""
        return self._segments.get(self.turns)[0]

    def prompt_mismatches(self) -> int:
        """Turns whose prompt did not extend the previous sequence (computed with segments())."""
        return self._segments.get(self.turns)[1]


@dataclass
class TokenSequence:
    """A token-exact training sequence. `mask[i]` is 1 where the model generated `ids[i]`."""

    ids: list[int]
    mask: list[int]
    logprobs: list[float]  # the backend's logprob where mask is 1, else 0.0

    def extend(self, ids: list[int], generated: bool, logprobs: list[float] | None = None) -> None:
        self.ids.extend(ids)
        self.mask.extend([int(generated)] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))

    @property
    def prompt_length(self) -> int:
        """Tokens before the first generated one (what TRL calls the prompt)."""
        return self.mask.index(1) if 1 in self.mask else len(self.mask)


def token_segments(turns: list[TurnTokens]) -> tuple[list[TokenSequence], int]:
    """Flatten turns into token-exact sequences; returns (segments, prompt mismatches)."""
    segments: list[TokenSequence] = []
    mismatches = 0
    for turn in turns:
        current = segments[-1] if segments else None
        if current is not None and turn.prompt_ids[: len(current.ids)] == current.ids:
            # Tokens between the previous completion and this turn's generation prompt are the
            # environment's (tool results, chat markup): conditioned on, never trained on.
            current.extend(turn.prompt_ids[len(current.ids) :], generated=False)
        else:
            if current is not None:
                mismatches += 1
            current = TokenSequence([], [], [])
            current.extend(turn.prompt_ids, generated=False)
            segments.append(current)
        current.extend(turn.completion_ids, generated=True, logprobs=turn.logprobs)
    return segments, mismatches


@dataclass
class TrajectoryGroup:
    """All attempts at one prompt: the unit GRPO normalises rewards over."""

    group_id: str
    row_id: str
    trajectories: list[Trajectory]

    @property
    def scored(self) -> list[Trajectory]:
        return [t for t in self.trajectories if not t.failed and t.reward is not None]

    @property
    def rewards(self) -> list[float]:
        return [t.reward for t in self.scored if t.reward is not None]

    @property
    def judge_failed(self) -> bool:
        """The group's judge gave no usable scores: nothing of it can be trained on."""
        return any(t.judge_failed for t in self.trajectories)

    @property
    def has_signal(self) -> bool:
        """False when every scored attempt got the same reward: no advantage to learn from."""
        rewards = self.rewards
        return len(rewards) >= 2 and statistics.pstdev(rewards) > 0.0


def group_trajectories(trajectories: list[Trajectory]) -> list[TrajectoryGroup]:
    """Groups in first-seen order, samples in index order."""
    groups: dict[str, TrajectoryGroup] = {}
    for trajectory in trajectories:
        group = groups.get(trajectory.group_id)
        if group is None:
            group = groups[trajectory.group_id] = TrajectoryGroup(
                trajectory.group_id, trajectory.row_id, []
            )
        group.trajectories.append(trajectory)
    for group in groups.values():
        group.trajectories.sort(key=lambda t: t.sample_index)
    return list(groups.values())
