"""`toolgym eval`: base and tuned policies on the same rows with the same seeds, then compared.

    outcome = await run_eval(EvalRequest(env_id, dataset, out, base=spec, tuned=spec2))
    print(outcome.terminal())

    POLICY is MODEL_DIR, MODEL_DIR+ADAPTER_DIR or NAME@URL[,URL...]: see rollout.policy_spec
    (`--device` places a local one, `--request-timeout` bounds each call to a served one).

Everything lands in `out`: base.jsonl and tuned.jsonl (resumable rollouts), samples.jsonl (one
comparison per row), report.html with its PNG plots. The comparison is made from the
trajectories the rollouts return, not from the files read back. `rejudge` re-grades the stored
trajectories with the environment's current grader, rewrites them and the comparison, without
a single model call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from envs.actions import final_answer
from envs.data.rows import Row
from envs.episode import EpisodeGrader
from rollout.compare import Comparison, compare
from rollout.engine import RolloutResult, RolloutSettings, run_rollouts
from rollout.environments import EnvPool, sample_rows
from rollout.errors import RolloutConfigError
from rollout.policy import SamplingParams
from rollout.policy_spec import PolicySpec, open_policy
from rollout.report import ReportFiles, terminal_summary, write_report
from rollout.store import read_trajectories, rewrite_trajectories
from rollout.trajectory import Trajectory

SIDES = ("base", "tuned")


@dataclass(frozen=True)
class EvalRequest:
    """One eval, as `toolgym eval` reads it from its arguments."""

    env_id: str
    dataset: Path
    out: Path  # a directory: base.jsonl, tuned.jsonl, samples.jsonl, report.html, plots
    base: PolicySpec | None = None  # both needed unless rejudge (which plays no policy)
    tuned: PolicySpec | None = None
    tools_url: str | None = None
    transport: str | None = None
    n: int | None = None  # rows drawn with `seed`; None: every row
    attempts: int = 1  # episodes per row and side
    temperature: float = 0.0
    max_tokens: int = 512  # per turn
    concurrency: int = 32
    episode_timeout_s: float = 600.0
    solved_threshold: float = 0.5
    seed: int = 0
    progress: bool = True
    rejudge: bool = False  # re-grade the stored trajectories instead of playing

    def policies(self) -> dict[str, PolicySpec]:
        if self.base is None or self.tuned is None:
            raise RolloutConfigError("eval needs a base and a tuned policy (or rejudge)")
        return {"base": self.base, "tuned": self.tuned}

    def settings(self) -> RolloutSettings:
        return RolloutSettings(
            env_id=self.env_id,
            group_size=self.attempts,
            concurrency=self.concurrency,
            episode_timeout_s=self.episode_timeout_s,
            sampling=SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens),
            seed=self.seed,
            progress=self.progress,
        )


@dataclass(frozen=True)
class EvalOutcome:
    """The comparison, the trajectories it was made from, and where its files are."""

    comparison: Comparison
    base: list[Trajectory]
    tuned: list[Trajectory]
    rows: list[Row]
    samples: Path
    report: ReportFiles
    rejudged: dict[str, int] = field(default_factory=dict)  # side -> rewards changed

    def terminal(self) -> str:
        """What `toolgym eval` prints."""
        lines = [f"re-judged {side}: {n} rewards changed" for side, n in self.rejudged.items()]
        lines.append(terminal_summary(self.comparison, tuned=self.tuned))
        lines.append(f"\nper sample: {self.samples}\nreport: {self.report.html}")
        return "\n".join(lines)


def references(rows: Sequence[Row]) -> dict[str, str]:
    return {str(row.id): " | ".join(row.answers()) for row in rows}


async def play_side(
    pool: EnvPool, rows: list[Row], spec: PolicySpec, settings: RolloutSettings, out: Path
) -> RolloutResult:
    policy = open_policy(spec)
    try:
        return await run_rollouts(rows, pool.factory(), policy, settings, out)
    finally:
        await policy.aclose()


def tools_used(trajectory: Trajectory) -> set[str]:
    """Tools that answered without an error, as the episode counted them (from the transport's
    error flag). Files written before trajectories recorded that fall back to the tool text."""
    if trajectory.tools_used is not None:
        return set(trajectory.tools_used)
    return {
        str(m.get("name"))
        for m in trajectory.messages
        if m.get("role") == "tool" and not str(m.get("content", "")).startswith("Error")
    }


async def rejudge(
    trajectories: list[Trajectory], rows: Sequence[Row], grader: EpisodeGrader
) -> int:
    """Re-grade every answered trajectory in place; returns how many rewards changed."""
    by_id = {str(row.id): row for row in rows}
    changed = 0
    for trajectory in trajectories:
        row = by_id.get(trajectory.row_id)
        if row is None or trajectory.answer is None or trajectory.error is not None:
            continue
        grade = await grader.grade(row, final_answer(trajectory.answer), tools_used(trajectory))
        if grade.failed:
            raise RolloutConfigError(f"re-judging {trajectory.row_id} failed: {grade.error}")
        if trajectory.reward != grade.score:
            changed += 1
        trajectory.reward = grade.score
        trajectory.scores["grader"] = grade.score
        trajectory.grade = grade.model_dump(mode="json")
    return changed


@dataclass(frozen=True)
class Rejudged:
    trajectories: list[Trajectory]
    changed: int  # rewards that changed


async def rejudge_file(path: Path, rows: Sequence[Row], grader: EpisodeGrader) -> Rejudged:
    """Re-grade the trajectories stored in `path` and rewrite it through the store (atomic;
    a torn last line left by a killed run is dropped, as every reader skips it)."""
    trajectories = read_trajectories(path).trajectories
    if not trajectories:
        raise RolloutConfigError(
            f"{path} holds no trajectories: run `toolgym eval` without --rejudge first"
        )
    changed = await rejudge(trajectories, rows, grader)
    rewrite_trajectories(path, trajectories)
    return Rejudged(trajectories, changed)


def write_samples(comparison: Comparison, path: Path) -> None:
    lines = [json.dumps(s.model_dump(mode="json")) for s in comparison.samples]
    path.write_text("\n".join(lines) + "\n")


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RolloutConfigError(f"--out {out} is a file; eval writes a directory of files")
    out.mkdir(parents=True, exist_ok=True)


async def _played(
    request: EvalRequest, pool: EnvPool, rows: list[Row]
) -> dict[str, list[Trajectory]]:
    settings = request.settings()
    played = {}
    for side, spec in request.policies().items():
        result = await play_side(pool, rows, spec, settings, request.out / f"{side}.jsonl")
        played[side] = result.trajectories
    return played


async def _rejudged(out: Path, pool: EnvPool) -> dict[str, Rejudged]:
    env = pool.factory()()
    try:
        grader: EpisodeGrader | None = getattr(env, "grader", None)
        if grader is None:
            raise RolloutConfigError(f"{pool.env_id} exposes no grader to re-judge with")
        return {
            side: await rejudge_file(out / f"{side}.jsonl", pool.rows, grader) for side in SIDES
        }
    finally:
        await env.aclose()


async def run_eval(request: EvalRequest) -> EvalOutcome:
    """Play (or re-judge) both sides, compare them, write samples.jsonl and the report."""
    if not request.rejudge:
        request.policies()  # a missing policy is said before any row is loaded
    _prepare_out(request.out)
    pool = EnvPool(
        request.env_id,
        dataset=request.dataset,
        tools_url=request.tools_url,
        transport=request.transport,
    )
    try:
        rows = sample_rows(pool.rows, request.n, request.seed)
        rejudged: dict[str, int] = {}
        if request.rejudge:
            stored = await _rejudged(request.out, pool)
            sides = {side: r.trajectories for side, r in stored.items()}
            rejudged = {side: r.changed for side, r in stored.items()}
        else:
            sides = await _played(request, pool, rows)
    finally:
        await pool.aclose()
    return _report(request, rows, sides["base"], sides["tuned"], rejudged)


def _report(
    request: EvalRequest,
    rows: list[Row],
    base: list[Trajectory],
    tuned: list[Trajectory],
    rejudged: dict[str, int],
) -> EvalOutcome:
    comparison = compare(base, tuned, solved_threshold=request.solved_threshold)
    samples = request.out / "samples.jsonl"
    write_samples(comparison, samples)
    report = write_report(
        comparison,
        base,
        tuned,
        request.out,
        references=references(rows),
        title=f"{request.env_id} eval",
    )
    return EvalOutcome(comparison, base, tuned, rows, samples, report, rejudged)
