"""The generator's core, from an environment id to checked tasks: discover, explore, write,
check, drop near-duplicates.

The environment is made the way every caller makes it (gymnasium, its registration's kwargs),
and explored through its own tool client, so a `tools:` allowlist, a stdio command, headers
and tokens mean here exactly what they mean in an episode. Its dataset is replaced by a
placeholder row: the point is to make the tasks it does not have yet. The tool server is
closed before the model is asked anything, so no server process idles through generation.

Measuring difficulty needs a policy and the rollout engine, so it lives in rollout
(rollout.task_probe); writing rows and splits is envs.taskgen.output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
from pydantic import BaseModel, Field
from tqdm import tqdm

from envs.client import ToolClient
from envs.data.rows import Row, RowMetadata
from envs.errors import EnvConfigError
from envs.taskgen.checks import REASONS, TaskChecker
from envs.taskgen.dedup import PromptEmbedder, near_duplicates
from envs.taskgen.explore import Explorer, discover_tools, stderr_warning
from envs.taskgen.generate import GenerationStats, TaskWriter
from envs.taskgen.model import ModelConfig, TaskModel
from envs.taskgen.records import KeptTask, Observation, TaskgenError, ToolInfo

PLACEHOLDER = Row(
    id="taskgen-placeholder",
    prompt="(no tasks yet: this environment is being explored to write them)",
    metadata=RowMetadata(task_type="taskgen", difficulty="unmeasured"),
)


@dataclass(frozen=True)
class GenerationRequest:
    env_id: str
    model: ModelConfig
    n: int = 200
    seed: int = 0
    allow_writes: bool = False
    max_calls: int = 100
    per_request: int = 10
    max_retries: int = 2
    dedup_threshold: float = 0.9
    progress: bool = True
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. tools_url, transport


class ExplorationReport(BaseModel):
    budget: int
    calls: int = 0  # tool calls made
    resource_reads: int = 0
    errors: int = 0  # observations flagged is_error (tool refusals included)
    infra_errors: int = 0  # calls the server failed to answer at all


class CheckReport(BaseModel):
    candidates: int = 0  # task objects the model wrote
    passed: int = 0  # after every check, near-duplicates included
    kept: int = 0  # written (at most n)
    surplus: int = 0  # passed, but more than n were asked for
    dropped: dict[str, int] = Field(default_factory=dict)  # reason -> count (see checks.py)


class GenerationResult(BaseModel):
    tools: list[ToolInfo]
    observations: list[Observation]
    tasks: list[KeptTask]
    exploration: ExplorationReport
    generation: dict[str, Any]
    checks: CheckReport


def check_env_id(env_id: str) -> None:
    """An unknown id fails first, in one line, before any model is loaded."""
    if env_id not in gym.registry:
        known = ", ".join(sorted(e for e in gym.registry if e.startswith("toolgym/")))
        raise EnvConfigError(
            f"no environment {env_id!r} is registered (known: {known}); see `toolgym envs list`"
        )


def make_env(env_id: str, overrides: dict[str, Any]) -> Any:
    """The registered environment over a placeholder row; it must expose its tool client."""
    check_env_id(env_id)
    try:
        env = gym.make(env_id, disable_env_checker=True, dataset=[PLACEHOLDER], **overrides)
    except TypeError:  # a plugin's own class, which takes no dataset
        env = gym.make(env_id, disable_env_checker=True, **overrides)
    unwrapped = env.unwrapped
    if not hasattr(type(unwrapped), "client") or not hasattr(unwrapped, "aclose"):
        raise EnvConfigError(f"{env_id} exposes no tool client (`client`) to explore")
    return unwrapped


async def explore_env(
    request: GenerationRequest, warn: Callable[[str], None]
) -> tuple[list[ToolInfo], Explorer]:
    """Discover and explore; the environment (and its server) is closed on return."""
    env = make_env(request.env_id, request.env_kwargs)
    try:
        client: ToolClient = env.client
        await client.begin_episode()  # a stdio server that cannot start fails here
        tools = await discover_tools(client, allow_writes=request.allow_writes, warn=warn)
        explorer = Explorer(client, tools, request.max_calls, request.seed, request.progress)
        if not explorer.callable:
            listed = ", ".join(f"{t.name} ({t.skipped})" for t in tools) or "none"
            raise TaskgenError(
                f"{request.env_id}: no tool exploration may call; its tools: {listed}"
            )
        await explorer.run()
    finally:
        await env.aclose()
    return tools, explorer


def exploration_report(explorer: Explorer) -> ExplorationReport:
    observations = explorer.observations
    return ExplorationReport(
        budget=explorer.budget,
        calls=sum(1 for o in observations if not o.is_resource),
        resource_reads=sum(1 for o in observations if o.is_resource),
        errors=sum(1 for o in observations if o.is_error),
        infra_errors=explorer.infra_errors,
    )


def drop_near_duplicates(
    tasks: list[KeptTask], embedder: PromptEmbedder, threshold: float, progress: bool
) -> tuple[list[KeptTask], int]:
    """The tasks without near-duplicate prompts (first kept), and how many were dropped."""
    if len(tasks) < 2:
        return tasks, 0
    bar = tqdm(total=len(tasks), desc="check", unit="task", disable=None if progress else True)
    try:
        vectors = embedder.encode([t.task.prompt for t in tasks])
        dropped = set(near_duplicates(vectors, threshold))
        bar.update(len(tasks))
    finally:
        bar.close()
    return [t for i, t in enumerate(tasks) if i not in dropped], len(dropped)


async def generate_tasks(
    request: GenerationRequest,
    embedder: PromptEmbedder,
    warn: Callable[[str], None] = stderr_warning,
) -> GenerationResult:
    """Checked tasks for `request.env_id` (TaskgenError when none survive the checks)."""
    tools, explorer = await explore_env(request, warn)
    checker = TaskChecker(explorer.observations, [t.name for t in tools])
    model = TaskModel(request.model)
    writer = TaskWriter(
        model,
        tools,  # all of them: the policy is offered all of them in an episode
        explorer.observations,
        checker,
        request.n,
        per_request=request.per_request,
        max_retries=request.max_retries,
        seed=request.seed,
        progress=request.progress,
    )
    try:
        passed = await writer.run()
    finally:
        await model.aclose()
    unique, near = drop_near_duplicates(passed, embedder, request.dedup_threshold, request.progress)
    dropped = Counter(checker.dropped)
    dropped["near_duplicate"] += near
    counts = {reason: dropped[reason] for reason in REASONS if dropped[reason]}
    if not unique:
        _no_valid_tasks(writer.stats, counts)
    kept = unique[: request.n]
    checks = CheckReport(
        candidates=writer.stats.candidates,
        passed=len(unique),
        kept=len(kept),
        surplus=len(unique) - len(kept),
        dropped=counts,
    )
    return GenerationResult(
        tools=tools,
        observations=explorer.observations,
        tasks=kept,
        exploration=exploration_report(explorer),
        generation={**vars(writer.stats), "response_format": model.format},
        checks=checks,
    )


def _no_valid_tasks(stats: GenerationStats, dropped: dict[str, int]) -> None:
    reasons = ", ".join(f"{reason} {count}" for reason, count in dropped.items()) or "none"
    raise TaskgenError(
        f"no valid tasks: the model wrote {stats.candidates} candidate(s) in "
        f"{stats.requests} request(s) and the checks dropped them all ({reasons}); "
        f"malformed replies: {stats.malformed_replies}"
    )
