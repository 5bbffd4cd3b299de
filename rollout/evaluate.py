"""`toolgym eval`: base and tuned policies on the same rows with the same seeds, then compared.

    POLICY is MODEL_DIR, MODEL_DIR+ADAPTER_DIR or NAME@URL[,URL...]: see rollout.policy_spec
    (`--device` places a local one, `--request-timeout` bounds each call to a served one).

Everything lands in `--out DIR`: base.jsonl and tuned.jsonl (resumable rollouts),
samples.jsonl (one comparison per row), report.html with its PNG plots. `--rejudge` re-grades
the stored trajectories with the environment's current grader and rewrites the comparison,
without a single model call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from envs.actions import final_answer
from rollout.compare import Comparison, compare
from rollout.engine import RolloutSettings, run_rollouts
from rollout.environments import EnvPool
from rollout.errors import RolloutConfigError
from rollout.policy_spec import PolicySpec, open_policy
from rollout.store import read_trajectories
from rollout.trajectory import Trajectory


def references(rows: list[Any]) -> dict[str, str]:
    out = {}
    for row in rows:
        answer = getattr(row, "reference_answer", "")
        out[str(row.id)] = answer if isinstance(answer, str) else " | ".join(answer)
    return out


async def play_side(
    pool: EnvPool, rows: list[Any], spec: PolicySpec, settings: RolloutSettings, out: Path
) -> None:
    policy = open_policy(spec)
    try:
        await run_rollouts(rows, pool.factory(), policy, settings, out)
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


async def rejudge_file(path: Path, pool: EnvPool) -> int:
    """Re-grade every answered trajectory in `path` in place; returns how many changed."""
    grader = getattr(pool.factory()(), "grader", None)
    if grader is None:
        raise RolloutConfigError(f"{pool.env_id} exposes no grader to re-judge with")
    rows = {str(row.id): row for row in pool.rows}
    trajectories = read_trajectories(path).trajectories
    changed = 0
    for trajectory in trajectories:
        row = rows.get(trajectory.row_id)
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
    partial = path.with_suffix(".jsonl.partial")
    partial.write_text("".join(t.model_dump_json() + "\n" for t in trajectories))
    os.replace(partial, path)
    return changed


def write_samples(comparison: Comparison, path: Path) -> None:
    lines = [json.dumps(s.model_dump(mode="json")) for s in comparison.samples]
    path.write_text("\n".join(lines) + "\n")


def load_and_compare(out: Path, *, solved_threshold: float = 0.5) -> tuple[Comparison, list, list]:
    base = read_trajectories(out / "base.jsonl").trajectories
    tuned = read_trajectories(out / "tuned.jsonl").trajectories
    if not base or not tuned:
        raise RolloutConfigError(
            f"{out} has no base.jsonl/tuned.jsonl trajectories: run `toolgym eval` without "
            "--rejudge first"
        )
    return compare(base, tuned, solved_threshold=solved_threshold), base, tuned
