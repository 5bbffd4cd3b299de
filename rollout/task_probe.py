"""Difficulty, measured: the base policy plays every generated task, and its pass rate is the
task's difficulty.

A model asked to rate its own tasks' difficulty guesses; what matters for RL is whether the
policy to be trained succeeds sometimes (rollout.prior_check). So each task with a reference
answer is played `attempts` times through the prior check (the same engine, environments and
grader as training), and each row gets its success rate. A task without a reference answer
cannot be graded, so it stays "unmeasured", as does a task whose every episode failed for an
infrastructure reason.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from envs.data.rows import Row
from rollout.engine import RolloutSettings
from rollout.policy import SamplingParams
from rollout.policy_spec import LocalSpec, PolicySpec


class ProbeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int = Field(default=4, ge=1)  # episodes per task
    threshold: float = Field(default=0.5, ge=0, le=1)  # reward counted a success
    temperature: float = Field(default=1.0, ge=0)
    max_tokens: int = Field(default=512, ge=1)  # per turn
    concurrency: int = Field(default=16, ge=1)
    episode_timeout_s: float = Field(default=600.0, gt=0)
    seed: int = 0
    progress: bool = True


class ProbeReport(BaseModel):
    policy: str
    attempts_per_task: int
    threshold: float
    probed: int = 0  # tasks with a measured pass rate
    unlabelled: int = 0  # tasks without a reference answer: not gradable, not probed
    unscored: int = 0  # tasks whose every episode failed (infrastructure), left unmeasured
    failed_episodes: int = 0
    pass_at_1: float = 0.0
    pass_at_k: float = 0.0
    headroom: float = 0.0
    verdict: str = "nothing to probe: no task has a reference answer"


def describe(spec: PolicySpec) -> str:
    if isinstance(spec, LocalSpec):
        adapter = f"+{spec.adapter}" if spec.adapter else ""
        return f"{spec.model_dir}{adapter}"
    return f"{spec.name}@{','.join(spec.urls)}"


def rollout_settings(env_id: str, settings: ProbeSettings) -> RolloutSettings:
    return RolloutSettings(
        env_id=env_id,
        group_size=settings.attempts,
        concurrency=settings.concurrency,
        episode_timeout_s=settings.episode_timeout_s,
        sampling=SamplingParams(temperature=settings.temperature, max_tokens=settings.max_tokens),
        seed=settings.seed,
        progress=settings.progress,
    )


async def probe_tasks(
    env_id: str,
    rows: list[Row],
    spec: PolicySpec,
    settings: ProbeSettings,
    env_kwargs: dict[str, Any] | None = None,
) -> tuple[dict[str, tuple[float, int]], ProbeReport]:
    """Row id -> (pass rate, attempts scored) for every labelled row the policy could play."""
    from rollout.environments import EnvPool
    from rollout.prior_check import run_prior_check

    labelled = [row for row in rows if row.reference_answer is not None]
    report = ProbeReport(
        policy=describe(spec),
        attempts_per_task=settings.attempts,
        threshold=settings.threshold,
        unlabelled=len(rows) - len(labelled),
    )
    if not labelled:
        return {}, report
    kwargs = env_kwargs or {}
    pool = EnvPool(
        env_id,
        dataset=labelled,
        tools_url=kwargs.get("tools_url"),
        transport=kwargs.get("transport"),
    )
    try:
        run = await run_prior_check(
            pool,
            spec,
            rollout_settings(env_id, settings),
            rows=len(labelled),
            threshold=settings.threshold,
        )
    finally:
        await pool.aclose()
    check = run.result
    measured = {o.row_id: (o.success_rate, o.attempts) for o in check.outcomes}
    return measured, report.model_copy(
        update={
            "probed": len(measured),
            "unscored": len(labelled) - len(measured),
            "failed_episodes": check.failed_episodes,
            "pass_at_1": check.pass_at_1,
            "pass_at_k": check.pass_at_k,
            "headroom": check.headroom,
            "verdict": check.verdict,
        }
    )
