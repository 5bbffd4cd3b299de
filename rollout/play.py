"""One episode: the policy and the environment take turns until the episode ends.

The conversation sent to the policy is exactly the one it is recorded with: the assistant
message as the backend returned it, then the environment's observation messages. Failures are
sorted by whose they are: the policy server's (PolicyError), the tool server's (the
environment's `infra_error`), the grader's, or the clock's (episode timeout). Each ends up on
the trajectory's `error`, with no reward.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

from rollout.errors import PolicyError
from rollout.policy import Policy, SamplingParams, TurnRequest
from rollout.trajectory import (
    ErrorKind,
    Trajectory,
    TrajectoryError,
    TurnTokens,
    token_segments,
)


class AsyncToolEnv(Protocol):
    """What the engine needs of an environment (envs.ToolEnv provides it)."""

    rows: list[Any]

    async def areset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...

    async def astep(
        self, action: Any
    ) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class EpisodeJob:
    row: Any
    group_id: str
    sample_index: int
    seed: int


def episode_seed(base_seed: int, group_id: str, sample_index: int) -> int:
    """A stable per-episode seed: the same run settings give the same seeds on any machine."""
    digest = hashlib.blake2b(f"{base_seed}:{group_id}:{sample_index}".encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "big") & 0x7FFFFFFF


def row_metadata(row: Any) -> dict[str, Any]:
    metadata = getattr(row, "metadata", None)
    if metadata is None:
        return {}
    if hasattr(metadata, "model_dump"):
        return dict(metadata.model_dump(mode="json"))
    return dict(metadata)


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
        trajectory.token_mismatches = token_segments(trajectory.turns)[1]
        return trajectory


def _apply_info(trajectory: Trajectory, info: dict[str, Any]) -> None:
    calls = info.get("tool_calls") or []
    trajectory.metrics.tool_calls = len(calls)
    trajectory.metrics.tool_errors = sum(1 for c in calls if not c.get("ok"))
    trajectory.tools_used = sorted(info.get("tools_used") or [])
    trajectory.metrics.tool_s = round(sum(c.get("latency_s", 0.0) for c in calls), 4)
    trajectory.grade = info.get("grade")


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


async def _play(
    env: AsyncToolEnv,
    policy: Policy,
    job: EpisodeJob,
    sampling: SamplingParams,
    version: str,
    recorder: EpisodeRecorder,
) -> Trajectory:
    trajectory = recorder.trajectory
    observation, info = await env.areset(seed=job.seed, options={"row_id": job.row.id})
    messages = trajectory.messages
    messages.extend(observation)
    tools = list(info.get("tools") or [])
    trajectory.tools = [spec.get("function", {}).get("name", "") for spec in tools]
    while True:
        turn_seed = job.seed + len(trajectory.turns)
        request = TurnRequest(list(messages), tools, sampling, model=version, seed=turn_seed)
        turn = await policy.complete(request)
        trajectory.turns.append(TurnTokens.from_turn(turn))
        messages.append(turn.message)
        observation, reward, terminated, truncated, info = await env.astep(turn.message)
        messages.extend(observation)
        if terminated or truncated:
            break
    _apply_info(trajectory, info)
    trajectory.metrics.terminated, trajectory.metrics.truncated = terminated, truncated
    trajectory.answer = info.get("answer")
    if info.get("infra_error"):
        return recorder.fail("tool", str(info["infra_error"]))
    if info.get("grader_error"):
        return recorder.fail("grader", str(info["grader_error"]))
    trajectory.reward = float(reward)
    trajectory.scores["grader"] = float(reward)
    return recorder.finish()
