"""`toolgym eval`: base and tuned policies on the same rows with the same seeds, then compared.

    outcome = await run_eval(EvalRequest(env_id, dataset, out, base=spec, tuned=spec2))
    print(outcome.terminal())

    POLICY is MODEL_DIR, MODEL_DIR+ADAPTER_DIR or NAME@URL[,URL...]: see rollout.policy_spec
    (`--device` places a local one, `--request-timeout` bounds each call to a served one).

Everything lands in `out`: base.jsonl and tuned.jsonl (resumable rollouts), samples.jsonl (one
comparison per row), release.json (rollout.release: intervals, flips, cohort spread, forgetting,
the gate's verdict), report.html with its PNG plots; a probe set's rollouts go to out/probe/.
The comparison is made from the trajectories the rollouts return, not from the files read
back. `rejudge` re-grades the stored trajectories with the environment's current grader,
rewrites them and the comparison, without a single model call. With a gate, the outcome's
`exit_code` is 1 when a rule fails; a gate file is checked before anything is played.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from envs.actions import final_answer
from envs.data.rows import Row
from envs.episode import EpisodeGrader
from envs.errors import EnvConfigError, ToolInfraError
from rollout.compare import Comparison, compare
from rollout.engine import RolloutResult, RolloutSettings, run_rollouts
from rollout.environments import EnvPool, labelled_rows, sample_rows
from rollout.errors import RolloutConfigError
from rollout.forgetting import (
    Forgetting,
    KLResult,
    ProbeRequest,
    Schemas,
    format_checks,
    probe_result,
    schemas_of,
)
from rollout.gate import Gate, GateConfigError, check_keys, needs_probe
from rollout.kl import measure_kl
from rollout.policy import SamplingParams
from rollout.policy_spec import PolicySpec, open_policy
from rollout.release import ReleaseCheck, release_check, release_lines, write_release
from rollout.report import ReportFiles, write_report
from rollout.report_text import terminal_summary
from rollout.stats import RESAMPLES, compute_statistics, with_intervals
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
    gate: Gate | None = None  # rules for a yes/no (rollout.gate); None: figures only
    probe: ProbeRequest | None = None  # another environment both sides play (forgetting)
    kl: bool = True  # KL(tuned || base) on the tuned tokens (local policies; rollout.kl)
    kl_sequences: int | None = None  # score at most this many sequences; None: all
    resamples: int = RESAMPLES  # bootstrap resamples of the intervals

    def policies(self) -> dict[str, PolicySpec]:
        if self.base is None or self.tuned is None:
            raise RolloutConfigError("eval needs a base and a tuned policy (or rejudge)")
        return {"base": self.base, "tuned": self.tuned}

    def settings(self, env_id: str | None = None) -> RolloutSettings:
        return RolloutSettings(
            env_id=env_id or self.env_id,
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
    release: ReleaseCheck | None = None  # statistics, forgetting, the gate's verdict
    probe: dict[str, list[Trajectory]] = field(default_factory=dict)  # side -> probe episodes

    @property
    def exit_code(self) -> int:
        """What `toolgym eval` exits with: 1 when a gate rule failed, else 0."""
        return self.release.exit_code if self.release is not None else 0

    def terminal(self) -> str:
        """What `toolgym eval` prints."""
        lines = [f"re-judged {side}: {n} rewards changed" for side, n in self.rejudged.items()]
        lines.append(terminal_summary(self.comparison, tuned=self.tuned))
        if self.release is not None:
            lines += release_lines(self.release)
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


@dataclass
class EvalSet:
    """Rows of one environment that both sides play: the main set, or the probe set."""

    name: str  # "main" or "probe"
    env_id: str
    pool: EnvPool
    rows: list[Row]
    out: Path  # where base.jsonl and tuned.jsonl go
    schemas: Schemas | None = None  # the offered tools' argument schemas (format checks)
    row_schemas: dict[str, Schemas] = field(default_factory=dict)  # rows with their own tools


def _say(request: EvalRequest, text: str) -> None:
    """A line on stderr before a long step (stdout holds the summary alone)."""
    if request.progress:
        print(text, file=sys.stderr, flush=True)


async def _played(
    request: EvalRequest, sets: list[EvalSet]
) -> dict[str, dict[str, list[Trajectory]]]:
    """set name -> side -> trajectories; each side's policy is opened once for every set."""
    played: dict[str, dict[str, list[Trajectory]]] = {s.name: {} for s in sets}
    for side, spec in request.policies().items():
        policy = open_policy(spec)
        try:
            for one in sets:
                _say(request, f"eval: {side} plays {len(one.rows)} {one.name} rows")
                settings = request.settings(one.env_id)
                out = one.out / f"{side}.jsonl"
                result: RolloutResult = await run_rollouts(
                    one.rows, one.pool.factory(), policy, settings, out
                )
                played[one.name][side] = result.trajectories
        finally:
            await policy.aclose()
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


async def tool_schemas(one: EvalSet) -> None:
    """The argument schemas the set's episodes were offered: a row's own tools, else the tool
    server's listing. A server that cannot list them leaves arguments unchecked (the other
    format checks stand); only its listing is asked for, no tool is called."""
    one.row_schemas = {str(row.id): schemas_of(row.tools) for row in one.rows if row.tools}
    if len(one.row_schemas) == len(one.rows):
        one.schemas = {}
        return
    env = one.pool.factory()()
    client = getattr(env, "client", None)  # a plugin's environment may have none
    try:
        one.schemas = schemas_of(await client.specs()) if client is not None else None
    except (ToolInfraError, EnvConfigError):
        one.schemas = None
    finally:
        await env.aclose()


def metadata_keys(rows: Sequence[Row]) -> set[str]:
    return {key for row in rows for key in row.metadata.model_dump(mode="json")}


def _open_probe(request: EvalRequest) -> EvalSet | None:
    probe = request.probe
    if probe is None:
        return None
    try:
        pool = EnvPool(
            probe.env_id, dataset=probe.dataset, tools_url=probe.tools_url,
            transport=probe.transport,
        )  # fmt: skip
    except RolloutConfigError as exc:
        said = str(exc).replace("--dataset", "--probe-dataset")
        raise RolloutConfigError(f"probe set: {said}") from None
    rows = sample_rows(pool.rows, probe.rows, request.seed)
    return EvalSet("probe", probe.env_id, pool, rows, request.out / "probe")


def _check_gate(request: EvalRequest, rows: Sequence[Row]) -> None:
    """Refuse a gate that cannot be checked before anything is played."""
    if request.gate is None:
        return
    if needs_probe(request.gate) and request.probe is None:
        raise GateConfigError(
            f"gate {request.gate.source}: probe_reward_drop_max needs a probe set "
            "(--probe-dataset ROWS.jsonl, or --probe-env ID with rows of its own)"
        )
    check_keys(request.gate, metadata_keys(rows))


@dataclass
class _Sides:
    """What was played (or re-judged): set name -> side -> trajectories."""

    played: dict[str, dict[str, list[Trajectory]]] = field(default_factory=dict)
    rejudged: dict[str, int] = field(default_factory=dict)  # main set: side -> rewards changed


async def _run_sets(request: EvalRequest, sets: list[EvalSet]) -> _Sides:
    if request.rejudge:
        sides: _Sides = _Sides()
        for one in sets:
            if one.name == "probe" and not (one.out / "base.jsonl").exists():
                continue  # an eval played without a probe: nothing stored to re-judge
            stored = await _rejudged(one.out, one.pool)
            sides.played[one.name] = {side: r.trajectories for side, r in stored.items()}
            if one.name == "main":
                sides.rejudged = {side: r.changed for side, r in stored.items()}
    else:
        sides = _Sides(await _played(request, sets))
    for one in sets:
        await tool_schemas(one)
    return sides


async def run_eval(request: EvalRequest) -> EvalOutcome:
    """Play (or re-judge) both sides, compare them, write samples.jsonl, release.json and the
    report. The probe set, when asked for, is played by the same policies with the same seeds."""
    if not request.rejudge:
        request.policies()  # a missing policy is said before any row is loaded
    _prepare_out(request.out)
    pool = EnvPool(
        request.env_id,
        dataset=request.dataset,
        tools_url=request.tools_url,
        transport=request.transport,
    )
    # Generated tasks may have no reference answer: the grader cannot score those, so eval
    # compares the sides on the rows it can (said here, so a smaller count is not a surprise).
    gradable = labelled_rows(pool.rows, "eval")
    if len(gradable) < len(pool.rows):
        _say(request, f"eval: left out {len(pool.rows) - len(gradable)} row(s) without a "
             "reference_answer (the grader cannot score them)")  # fmt: skip
    rows = sample_rows(gradable, request.n, request.seed)
    sets = [EvalSet("main", request.env_id, pool, rows, request.out)]
    try:
        _check_gate(request, sets[0].rows)
        probe = _open_probe(request)
        if probe is not None:
            sets.append(probe)
        sides = await _run_sets(request, sets)
    finally:
        for one in sets:
            await one.pool.aclose()
    kl = _kl(request, sides.played["main"].get("tuned", []))
    return _report(request, sets, sides, kl)


def _kl(request: EvalRequest, tuned: list[Trajectory]) -> KLResult:
    if not request.kl:
        return KLResult(unavailable="not asked for (--no-kl)")
    if request.rejudge:
        return KLResult(unavailable="re-judging plays no policy: KL is measured when they play")
    _say(request, "eval: KL(tuned || base) on the tuned tokens")
    return measure_kl(
        request.base, request.tuned, tuned, limit=request.kl_sequences, progress=request.progress
    )


def _forgetting(
    request: EvalRequest, sets: list[EvalSet], sides: _Sides, kl: KLResult
) -> Forgetting:
    formats = [
        format_checks(one.name, played["base"], played["tuned"], one.schemas, one.row_schemas)
        for one in sets
        if (played := sides.played.get(one.name))
    ]
    probe_sides = sides.played.get("probe")
    if probe_sides is None:
        note = (
            "no probe set stored to re-judge"
            if request.probe is not None
            else "not asked for: --probe-dataset ROWS.jsonl (or --probe-env ID) plays one"
        )
        return Forgetting(probe_note=note, formats=formats, kl=kl)
    compared = compare(
        probe_sides["base"], probe_sides["tuned"], solved_threshold=request.solved_threshold
    )
    env_id = next(one.env_id for one in sets if one.name == "probe")
    probe = probe_result(env_id, compared, seed=request.seed)
    return Forgetting(probe=probe, formats=formats, kl=kl)


def _report(request: EvalRequest, sets: list[EvalSet], sides: _Sides, kl: KLResult) -> EvalOutcome:
    base, tuned = sides.played["main"]["base"], sides.played["main"]["tuned"]
    comparison = compare(base, tuned, solved_threshold=request.solved_threshold)
    stats = compute_statistics(comparison, seed=request.seed, resamples=request.resamples)
    comparison = with_intervals(comparison, stats)
    release = release_check(stats, _forgetting(request, sets, sides, kl), request.gate)
    samples = request.out / "samples.jsonl"
    write_samples(comparison, samples)
    write_release(release, request.out / "release.json")
    report = write_report(
        comparison,
        base,
        tuned,
        request.out,
        references=references(sets[0].rows),
        title=f"{request.env_id} eval",
        release=release,
    )
    probe = sides.played.get("probe", {})
    return EvalOutcome(
        comparison, base, tuned, sets[0].rows, samples, report, sides.rejudged, release, probe
    )
