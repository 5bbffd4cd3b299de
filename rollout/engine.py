"""The rollout engine: `group_size` episodes per row, many rows at once, written as they finish.

    result = await run_rollouts(rows, make_env, policy, RolloutSettings(group_size=8), out)
    result.summary, result.trajectories, result.groups()

`concurrency` workers each own one environment and take episodes from a shared queue in row
order, so groups complete together. Each trajectory is appended to the output JSONL as soon
as it is done (with a group scorer, as soon as its group is done and judged); a rerun with the
same file skips everything already there, except that groups whose judging failed are judged
again (their episodes are not replayed). Rows without a reference answer need a scorer that
gives rewards on its own (a judge at weight 1). The result holds the trajectories themselves
(those read back on resume and those just played), so no caller re-reads the file. Failed episodes
are recorded with their error; when more fail than the budget allows, the run stops with
RolloutAbortedError, keeping what it wrote.
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from envs.data.rows import Row
from rollout.errors import RolloutAbortedError, RolloutConfigError
from rollout.play import AsyncToolEnv, EpisodeJob, episode_seed, play_episode
from rollout.policy import Policy, SamplingParams
from rollout.store import TrajectoryWriter, read_trajectories
from rollout.summary import RolloutSummary, summarize
from rollout.trajectory import Trajectory, TrajectoryGroup, group_trajectories


class RolloutSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    env_id: str = "toolgym/FilingsQA-v0"
    group_size: int = Field(default=8, ge=1)
    concurrency: int = Field(default=64, ge=1)
    episode_timeout_s: float = Field(default=600.0, gt=0)
    # Failed episodes tolerated before the run stops; None = 10% of the episodes to run.
    max_failures: int | None = Field(default=None, ge=0)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    seed: int = 0
    group_prefix: str = ""  # e.g. "step12/" so the same row in another step is another group
    policy_version: str | None = None  # None = whatever the policy serves now
    progress: bool = True


class GroupScorer(Protocol):
    """Scores a finished group in place (e.g. RULER); called before the group is written.

    A group it cannot score gets a `judge` error on its trajectories (never a zero reward):
    such trajectories do not count against the failure budget, and a rerun over the same file
    scores their group again instead of replaying it."""

    @property
    def scores_unlabelled(self) -> bool:
        """True when its reward needs no reference answer (a judge alone)."""
        ...

    async def score_group(self, row: Row, trajectories: list[Trajectory]) -> None: ...


@dataclass(frozen=True)
class RolloutResult:
    """What a run amounted to, with every trajectory of the rows asked for: those found in the
    file on resume and those played now, each once, in row order then sample order."""

    trajectories: list[Trajectory]
    summary: RolloutSummary

    def groups(self) -> list[TrajectoryGroup]:
        return group_trajectories(self.trajectories)


class LiveStats:
    """Running figures for the progress bar."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.rewards: list[float] = []
        self.failed = 0
        self.tokens = 0
        self.finished: list[Trajectory] = []

    def add(self, trajectory: Trajectory) -> None:
        self.finished.append(trajectory)
        self.tokens += trajectory.metrics.completion_tokens
        if trajectory.judge_failed:
            return  # played fine, only its judging failed: not an episode failure
        if trajectory.failed:
            self.failed += 1
        elif trajectory.reward is not None:
            self.rewards.append(trajectory.reward)

    def postfix(self) -> dict[str, str]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        reward = statistics.fmean(self.rewards) if self.rewards else 0.0
        return {
            "reward": f"{reward:.3f}",
            "ep/s": f"{len(self.finished) / elapsed:.1f}",
            "tok/s": f"{self.tokens / elapsed:.0f}",
            "failed": str(self.failed),
        }


def group_id_of(row: Row, settings: RolloutSettings) -> str:
    return f"{settings.group_prefix}{row.id}"


def plan_jobs(
    rows: Sequence[Row], settings: RolloutSettings, done: set[tuple[str, int]]
) -> list[EpisodeJob]:
    jobs = []
    for row in rows:
        group_id = group_id_of(row, settings)
        for index in range(settings.group_size):
            if (group_id, index) not in done:
                seed = episode_seed(settings.seed, group_id, index)
                jobs.append(EpisodeJob(row, group_id, index, seed))
    return jobs


class _Run:
    """The mutable state of one engine run, shared by its workers."""

    def __init__(
        self,
        jobs: list[EpisodeJob],
        policy: Policy,
        settings: RolloutSettings,
        writer: TrajectoryWriter,
        scorer: GroupScorer | None,
    ) -> None:
        self.queue: asyncio.Queue[EpisodeJob] = asyncio.Queue()
        for job in jobs:
            self.queue.put_nowait(job)
        self.policy, self.settings, self.writer, self.scorer = policy, settings, writer, scorer
        self.budget = (
            settings.max_failures
            if settings.max_failures is not None
            else max(1, math.ceil(0.1 * len(jobs)))
        )
        self.pending: dict[str, list[Trajectory]] = {}
        self.expected = Counter(job.group_id for job in jobs)  # episodes to run per group
        self.stats = LiveStats()
        self.bar = tqdm(
            total=len(jobs), desc="rollout", unit="ep", disable=not settings.progress, leave=False
        )
        self._last_postfix = 0.0

    async def worker(self, env: AsyncToolEnv) -> None:
        settings = self.settings
        while True:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            trajectory = await play_episode(
                env,
                self.policy,
                job,
                env_id=settings.env_id,
                sampling=settings.sampling,
                policy_version=settings.policy_version,
                timeout_s=settings.episode_timeout_s,
            )
            await self.finished(job, trajectory)

    async def finished(self, job: EpisodeJob, trajectory: Trajectory) -> None:
        if self.scorer is None:
            self.writer.write(trajectory)
        else:
            group = self.pending.setdefault(job.group_id, [])
            group.append(trajectory)
            if len(group) == self.expected[job.group_id]:
                del self.pending[job.group_id]
                await self.scorer.score_group(job.row, group)
                for member in sorted(group, key=lambda t: t.sample_index):
                    self.writer.write(member)
        self.stats.add(trajectory)
        self.bar.update(1)
        now = time.perf_counter()
        if now - self._last_postfix > 0.5:
            self._last_postfix = now
            self.bar.set_postfix(self.stats.postfix(), refresh=False)
        if self.stats.failed > self.budget:
            last = trajectory.error.message if trajectory.error else ""
            raise RolloutAbortedError(
                f"{self.stats.failed} episodes failed, more than the budget of {self.budget} "
                f"(last: {last}); what finished is in {self.writer.path}, rerun to resume"
            )


async def run_rollouts(
    rows: Sequence[Row],
    make_env: Callable[[], AsyncToolEnv],
    policy: Policy,
    settings: RolloutSettings,
    out: Path,
    *,
    scorer: GroupScorer | None = None,
) -> RolloutResult:
    """Play every (row, sample) not already in `out`; return all of them with their summary."""
    if not rows:
        raise RolloutConfigError("no rows to roll out")
    existing = read_trajectories(out).trajectories  # resume: the one read of the file
    foreign = {t.env_id for t in existing} - {settings.env_id}
    if foreign:
        raise RolloutConfigError(
            f"{out} holds trajectories of {sorted(foreign)}, not {settings.env_id}: "
            "resume only with the same environment, or choose another --out"
        )
    check_labels(rows, scorer)
    jobs = plan_jobs(rows, settings, {t.key for t in existing})
    envs = [make_env() for _ in range(min(settings.concurrency, len(jobs)))]
    with TrajectoryWriter(out) as writer, fewer_collections():
        run = _Run(jobs, policy, settings, writer, scorer)
        try:
            if scorer is not None:
                await rescore(rows, settings, existing, scorer, writer)
            async with asyncio.TaskGroup() as tasks:
                for env in envs:
                    tasks.create_task(run.worker(env))
        except* RolloutAbortedError as group:
            raise group.exceptions[0] from None
        finally:
            run.bar.close()
            for env in envs:
                await env.aclose()
    wall_s = time.perf_counter() - run.stats.started
    everything = wanted(rows, settings, existing + run.stats.finished)
    summary = summarize(everything, this_run=run.stats.finished, wall_s=wall_s)
    return RolloutResult(trajectories=everything, summary=summary)


_GEN0_THRESHOLD = 10_000  # CPython's default is 700


class _Collector:
    """The process's garbage-collector settings, tuned while any run is in progress."""

    runs = 0  # runs in progress in this process (they may overlap)
    saved: tuple[int, int, int] = (700, 10, 10)
    froze = False


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Garbage-collect less often while episodes run; the settings are restored afterwards.

    Every completion decodes into thousands of short-lived containers (a dict per logprob),
    so at the default threshold the young generation is collected once or more per model
    call, traversing objects that would die a moment later, and every survivor of the run
    (token id lists) is traversed again by the older generations: ~15% of the engine's CPU
    per model call at 256 concurrent episodes (benchmarks/bench_rollout.py). Objects that
    exist before the run are frozen (left out of collections) unless the process froze some
    itself. Overlapping runs tune once: the first to start saves, the last to end restores.
    """
    state = _Collector
    if state.runs == 0:
        state.saved = gc.get_threshold()
        state.froze = gc.get_freeze_count() == 0
        if state.froze:
            gc.freeze()
        gc.set_threshold(max(state.saved[0], _GEN0_THRESHOLD), *state.saved[1:])
    state.runs += 1
    try:
        yield
    finally:
        state.runs -= 1
        if state.runs == 0:
            gc.set_threshold(*state.saved)
            if state.froze:
                gc.unfreeze()


def check_labels(rows: Sequence[Row], scorer: GroupScorer | None) -> None:
    """Rows without a reference answer have no grader reward: only a scorer that needs none
    (a judge alone) can give them one. Refused before anything is played."""
    unlabelled = sum(1 for row in rows if row.reference_answer is None)
    if unlabelled and not (scorer is not None and scorer.scores_unlabelled):
        raise RolloutConfigError(
            f"{unlabelled} of {len(rows)} rows have no reference_answer, so the environment's "
            "grader cannot score them: add their answers, or score with a RULER judge alone "
            "(`toolgym rollout --ruler-model NAME --ruler-weight 1`; in a train config "
            "reward: {grader: 0, ruler: {judge: NAME@URL}})"
        )


async def rescore(
    rows: Sequence[Row],
    settings: RolloutSettings,
    existing: list[Trajectory],
    scorer: GroupScorer,
    writer: TrajectoryWriter,
) -> None:
    """Ask the judge again about the groups an earlier run played but could not get judged:
    their episodes are kept (not replayed), their new scores appended (a later line wins)."""
    by_group = {group_id_of(row, settings): row for row in rows}
    for group in group_trajectories(wanted(rows, settings, existing)):
        if not group.judge_failed:
            continue
        for trajectory in group.trajectories:
            if trajectory.judge_failed:
                trajectory.error = None
                trajectory.scores.pop("ruler", None)
                trajectory.reward = trajectory.scores.get("grader")  # None when unlabelled
        await scorer.score_group(by_group[group.group_id], group.trajectories)
        for trajectory in group.trajectories:
            writer.write(trajectory)


def wanted(
    rows: Sequence[Row], settings: RolloutSettings, trajectories: list[Trajectory]
) -> list[Trajectory]:
    """The planned episodes among `trajectories`, in row order then sample order: the same
    order whichever worker finished first, and whatever else an earlier run left in the file
    (other rows, a larger group size) is left out."""
    position = {group_id_of(row, settings): i for i, row in enumerate(rows)}
    chosen = [
        t for t in trajectories if t.group_id in position and t.sample_index < settings.group_size
    ]
    return sorted(chosen, key=lambda t: (position[t.group_id], t.sample_index))
