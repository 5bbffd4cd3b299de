"""One episode: the policy and the environment take turns until the episode ends.

The conversation sent to the policy is exactly the one it is recorded with: the assistant
message as the backend returned it, then the environment's observation messages. Failures are
sorted by whose they are: the policy server's (PolicyError), the tool server's (the
record's `infra_error`), the grader's, or the clock's (episode timeout). Each ends up on
the trajectory's `error`, with no reward. An episode of a row without a reference answer ends
with no reward and no error: the group's judge scores it. What the episode did is read off the
environment's typed `EpisodeRecord`, not its Gymnasium `info` dict.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from envs.errors import ToolInfraError
from rollout.errors import PolicyError
from rollout.policy import Policy, SamplingParams, TurnRequest
from rollout.trajectory import (
    ErrorKind,
    Trajectory,
    TrajectoryError,
    TurnTokens,
)

if TYPE_CHECKING:  # types only: importing envs registers every environment
    from envs.data.rows import Row
    from envs.record import EpisodeRecord


class AsyncToolEnv(Protocol):
    """What the engine needs of an environment (envs.ToolEnv provides it)."""

    rows: list[Row]

    @property
    def record(self) -> EpisodeRecord:
        """The current episode so far: tools offered once reset, then calls, answer, grade."""
        ...

    async def areset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...

    async def astep(
        self, action: Any
    ) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class EpisodeJob:
    row: Row
    group_id: str
    sample_index: int
    seed: int


def episode_seed(base_seed: int, group_id: str, sample_index: int) -> int:
    """A stable per-episode seed: the same run settings give the same seeds on any machine."""
    digest = hashlib.blake2b(f"{base_seed}:{group_id}:{sample_index}".encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "big") & 0x7FFFFFFF


def row_metadata(row: Row) -> dict[str, Any]:
    return dict(row.metadata.model_dump(mode="json"))


class EpisodeRecorder:
    """Builds the trajectory as the episode goes, so a failure keeps everything up to it."""

    def __init__(self, job: EpisodeJob, env_id: str, policy_version: str) -> None:
        self.job = job
        self.started = time.perf_counter()
        self.trajectory = Trajectory(
            row_id=str(job.row.id),
            group_id=job.group_id,
            sample_index=job.sample_index,
            env_id=env_id,
            policy_version=policy_version,
            seed=job.seed,
            messages=[],
            metadata=row_metadata(job.row),
        )

    def fail(self, kind: ErrorKind, message: str) -> Trajectory:
        self.trajectory.error = TrajectoryError(kind=kind, message=message)
        self.trajectory.reward = None
        return self.finish()

    def finish(self) -> Trajectory:
        trajectory = self.trajectory
        metrics = trajectory.metrics
        metrics.turns = len(trajectory.turns)
        metrics.completion_tokens = sum(len(t.completion_ids) for t in trajectory.turns)
        metrics.prompt_tokens = len(trajectory.turns[-1].prompt_ids) if trajectory.turns else 0
        metrics.policy_s = round(sum(t.latency_s for t in trajectory.turns), 4)
        metrics.episode_s = round(time.perf_counter() - self.started, 4)
        trajectory.token_mismatches = trajectory.prompt_mismatches()
        return trajectory


def _apply_record(trajectory: Trajectory, record: EpisodeRecord) -> None:
    trajectory.metrics.tool_calls = len(record.calls)
    trajectory.metrics.tool_errors = record.tool_errors
    trajectory.tools_used = record.tools_used
    trajectory.metrics.tool_s = round(sum(c.latency_s for c in record.calls), 4)
    trajectory.grade = record.grade.model_dump(mode="json") if record.grade else None
    trajectory.answer = record.answer


async def play_episode(
    env: AsyncToolEnv,
    policy: Policy,
    job: EpisodeJob,
    *,
    env_id: str,
    sampling: SamplingParams,
    policy_version: str | None = None,
    timeout_s: float | None = None,
) -> Trajectory:
    """Play one episode to its end; never raises for policy, tool, grader or time failures."""
    version = policy_version or policy.model
    recorder = EpisodeRecorder(job, env_id, version)
    try:
        async with asyncio.timeout(timeout_s):
            return await _play(env, policy, job, sampling, version, recorder)
    except TimeoutError:
        return recorder.fail("timeout", f"the episode took longer than {timeout_s:g}s")
    except PolicyError as exc:
        return recorder.fail("policy", f"{type(exc).__name__}: {exc}")
    except ToolInfraError as exc:  # at reset: the tool server could not open an episode
        return recorder.fail("tool", str(exc))


async def _play(
    env: AsyncToolEnv,
    policy: Policy,
    job: EpisodeJob,
    sampling: SamplingParams,
    version: str,
    recorder: EpisodeRecorder,
) -> Trajectory:
    trajectory = recorder.trajectory
    observation, _ = await env.areset(seed=job.seed, options={"row_id": job.row.id})
    messages = trajectory.messages
    messages.extend(observation)
    offered = env.record
    tools = list(offered.tools)
    trajectory.tools = offered.tool_names
    while True:
        turn_seed = job.seed + len(trajectory.turns)
        request = TurnRequest(list(messages), tools, sampling, model=version, seed=turn_seed)
        turn = await policy.complete(request)
        trajectory.turns.append(TurnTokens.from_turn(turn))
        messages.append(turn.message)
        observation, reward, terminated, truncated, _ = await env.astep(turn.message)
        messages.extend(observation)
        if terminated or truncated:
            break
    record = env.record
    _apply_record(trajectory, record)
    trajectory.metrics.terminated, trajectory.metrics.truncated = terminated, truncated
    if record.infra_error:
        return recorder.fail("tool", record.infra_error)
    if record.grader_error:
        return recorder.fail("grader", record.grader_error)
    if job.row.reference_answer is None:
        # Unlabelled: no grader reward exists (not a zero). The group's scorer (a judge) gives
        # the reward; the engine refuses such rows when there is none.
        return recorder.finish()
    trajectory.reward = float(reward)
    trajectory.scores["grader"] = float(reward)
    return recorder.finish()
