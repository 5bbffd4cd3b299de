"""`toolgym eval` end to end: two fake vLLM servers as base and tuned, a real tool server."""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _servers import fake_vllm
from test_prior_check import EveryOtherEpisode

from envs.data.build import build_dataset
from envs.data.rows import Row, RowMetadata, load_rows
from envs.graders.base import GradeResult, verdict_for
from rollout import evaluate
from rollout.cli import eval_request
from rollout.errors import RolloutConfigError
from rollout.fake_vllm import DEFAULT_MODEL, FakeSettings, echo_script
from rollout.policy_spec import parse_policy
from rollout.store import TrajectoryWriter, read_trajectories
from rollout.trajectory import Trajectory, TrajectoryError
from testkit import TOKENS, LiveServer
from trainer.cli import build_parser, main


@pytest.fixture(scope="module")
def data_dir(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval-data")
    build_dataset(corpus_dir, out, seed=0)
    return out


@pytest.fixture
def token() -> Iterator[None]:
    os.environ["TOOL_BEARER"] = TOKENS[0]
    yield
    del os.environ["TOOL_BEARER"]


def test_eval_compares_per_sample_and_rejudges_without_model_calls(
    data_dir: Path, http_server: LiveServer, tmp_path: Path, token: None
) -> None:
    out = tmp_path / "eval"
    with (
        fake_vllm(FakeSettings(script=echo_script)) as base,
        fake_vllm(FakeSettings()) as tuned,
    ):
        argv = [
            "eval", "--data-dir", str(data_dir), "--split", "val", "--n", "12",
            "--base", f"{DEFAULT_MODEL}@{base.url}", "--tuned", f"{DEFAULT_MODEL}@{tuned.url}",
            "--tools-url", http_server.url, "--out", str(out), "--no-progress",
        ]  # fmt: skip
        assert main(argv) == 0
        samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 12
        base_seeds = {t.row_id: t.seed for t in read_trajectories(out / "base.jsonl").trajectories}
        tuned_seeds = {
            t.row_id: t.seed for t in read_trajectories(out / "tuned.jsonl").trajectories
        }
        assert base_seeds == tuned_seeds  # the same rows with the same seeds
        for sample in samples:
            assert sample["base"]["tool_calls"] == 0  # echo answers at once
            assert sample["tool_calls_delta"] == sample["tuned"]["tool_calls"]
            assert sample["reward_delta"] == pytest.approx(
                sample["tuned"]["reward"] - sample["base"]["reward"]
            )
        html = (out / "report.html").read_text()
        assert "<html" in html.lower()
        # The built rows' list metadata (companies, periods, metrics) slice; a recipe does not.
        slices = html[html.index("<h2>Slices</h2>") : html.index("<h2>Plots</h2>")]
        assert "<h3>companies <span class=muted>" in slices
        assert "list values: a row counts in the slice of each of its items" in slices
        assert "<li><code>recipe</code>: dict values</li>" in slices
        assert "<li><code>source</code>: one value only (&#x27;synth&#x27;)</li>" in slices

        # A grader fix: corrupt the stored rewards, re-judge, and get the grader's back.
        path = out / "tuned.jsonl"
        original = {t.row_id: t.reward for t in read_trajectories(path).trajectories}
        broken = read_trajectories(path).trajectories
        for trajectory in broken:
            trajectory.reward = 0.123
        path.write_text("".join(t.model_dump_json() + "\n" for t in broken))
        served = (base.faults.served, tuned.faults.served)
        assert main([*argv, "--rejudge"]) == 0
        assert (base.faults.served, tuned.faults.served) == served  # no model calls
    rejudged = {t.row_id: t.reward for t in read_trajectories(path).trajectories}
    assert rejudged == original


def test_a_bad_policy_spec_is_one_clear_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "--data-dir", str(data_dir), "--base", "nowhere", "--tuned", "x@y",
            "--tools-url", "http://127.0.0.1:9", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    assert "MODEL_DIR+ADAPTER_DIR" in capsys.readouterr().err


def test_the_cli_prints_what_run_eval_returns_and_a_rerun_plays_nothing(
    data_dir: Path,
    http_server: LiveServer,
    tmp_path: Path,
    token: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    outcomes: list[evaluate.EvalOutcome] = []
    real = evaluate.run_eval

    async def recorded(request: evaluate.EvalRequest) -> evaluate.EvalOutcome:
        outcomes.append(await real(request))
        return outcomes[-1]

    monkeypatch.setattr(evaluate, "run_eval", recorded)
    out = tmp_path / "eval"
    with fake_vllm(FakeSettings()) as base, fake_vllm(FakeSettings(script=echo_script)) as tuned:
        argv = [
            "eval", "--data-dir", str(data_dir), "--n", "4", "--attempts", "2",
            "--base", f"{DEFAULT_MODEL}@{base.url}", "--tuned", f"{DEFAULT_MODEL}@{tuned.url}",
            "--tools-url", http_server.url, "--out", str(out), "--no-progress",
        ]  # fmt: skip
        assert main(argv) == 0
        (outcome,) = outcomes
        assert capsys.readouterr().out == outcome.terminal() + "\n"
        assert len(outcome.rows) == 4 and len(outcome.base) == len(outcome.tuned) == 8
        samples = [json.loads(line) for line in outcome.samples.read_text().splitlines()]
        assert samples == [s.model_dump(mode="json") for s in outcome.comparison.samples]
        stored = read_trajectories(out / "base.jsonl").trajectories
        assert sorted(stored, key=lambda t: t.key) == sorted(outcome.base, key=lambda t: t.key)

        # The same request again resumes both files: nothing is played, the same comparison.
        served = (base.faults.served, tuned.faults.served)
        again = asyncio.run(real(eval_request(build_parser().parse_args(argv))))
        assert (base.faults.served, tuned.faults.served) == served
    assert again.comparison == outcome.comparison
    assert (again.base, again.tuned) == (outcome.base, outcome.tuned)


def expected_pass(trajectories: list[Trajectory], threshold: float) -> tuple[float, float]:
    """pass@1 and pass@k counted by hand: per row, the share and the any of its successes."""
    rows: dict[str, list[bool]] = defaultdict(list)
    for t in trajectories:
        if t.error is None and t.reward is not None:
            rows[t.row_id].append(t.reward >= threshold)
    pass_at_1 = sum(sum(wins) / len(wins) for wins in rows.values()) / len(rows)
    return pass_at_1, sum(any(wins) for wins in rows.values()) / len(rows)


def test_eval_reports_pass_at_1_pass_at_k_and_headroom(
    data_dir: Path, http_server: LiveServer, tmp_path: Path, token: None
) -> None:
    rows = load_rows(data_dir / "val.jsonl")
    knows = EveryOtherEpisode({row.prompt: row.answers()[0] for row in rows})
    with (
        fake_vllm(FakeSettings(script=echo_script)) as base,
        fake_vllm(FakeSettings(script=knows)) as tuned,
    ):
        request = evaluate.EvalRequest(
            env_id="toolgym/FilingsQA-v0",
            dataset=data_dir / "val.jsonl",
            out=tmp_path / "eval",
            base=parse_policy(f"{DEFAULT_MODEL}@{base.url}"),
            tuned=parse_policy(f"{DEFAULT_MODEL}@{tuned.url}"),
            tools_url=http_server.url,
            n=8,
            attempts=4,
            progress=False,
        )
        outcome = asyncio.run(evaluate.run_eval(request))
    s = outcome.comparison.summary
    assert (s.base_pass.k, s.tuned_pass.k, s.tuned_pass.rows) == (4, 4, 8)
    assert (s.base_pass.pass_at_1, s.base_pass.pass_at_k) == (0.0, 0.0)  # echo never answers
    tuned_1, tuned_k = expected_pass(outcome.tuned, request.solved_threshold)
    assert 0.0 < tuned_1 < tuned_k  # right on some attempts only: there is headroom
    assert s.tuned_pass.pass_at_1 == pytest.approx(tuned_1)
    assert s.tuned_pass.pass_at_k == pytest.approx(tuned_k)
    assert s.tuned_pass.headroom == pytest.approx(tuned_k - tuned_1)
    figures = f"pass@4 0.000 → {tuned_k:.3f}, headroom 0.000 → {tuned_k - tuned_1:.3f}"
    assert figures in outcome.terminal()
    html = outcome.report.html.read_text()
    assert f"<tr><td>tuned</td><td>{tuned_1:.3f}</td><td>{tuned_k:.3f}</td>" in html
    samples = [json.loads(line) for line in outcome.samples.read_text().splitlines()]
    assert sum(x["tuned"]["successes"] for x in samples) == round(tuned_1 * 4 * 8)


class HalfGrader:
    """Every answer is worth 0.5."""

    async def grade(self, row: Any, answer: str, tools_used: set[str]) -> GradeResult:
        return GradeResult(score=0.5, verdict=verdict_for(0.5))


def stored(row: str, index: int, reward: float | None) -> Trajectory:
    return Trajectory(
        row_id=row,
        group_id=row,
        sample_index=index,
        env_id="e",
        policy_version="base",
        messages=[],
        answer=None if reward is None else "42",
        reward=reward,
        error=None if reward is not None else TrajectoryError(kind="tool", message="down"),
    )


def test_rejudge_rewrites_the_file_through_the_store(tmp_path: Path) -> None:
    path = tmp_path / "tuned.jsonl"
    with TrajectoryWriter(path) as writer:
        for trajectory in (stored("r1", 0, 1.0), stored("r1", 1, 0.5), stored("r1", 2, None)):
            writer.write(trajectory)
    with path.open("a") as handle:
        handle.write('{"row_id": "r1", "group_id": "r1", "sample_ind')  # a killed run's tail
    row = Row(
        id="r1",
        prompt="q",
        reference_answer="42",
        metadata=RowMetadata(task_type="lookup", difficulty="easy"),
    )
    rejudged = asyncio.run(evaluate.rejudge_file(path, [row], HalfGrader()))
    assert rejudged.changed == 1  # 1.0 -> 0.5; 0.5 stays; the failed episode is left alone
    again = read_trajectories(path)
    assert not again.partial_tail  # the rewrite holds whole records only
    assert again.trajectories == rejudged.trajectories
    assert [t.reward for t in again.trajectories] == [0.5, 0.5, None]
    assert list(tmp_path.iterdir()) == [path]  # no staging file left behind


def test_rejudging_an_empty_file_says_to_run_eval_first(tmp_path: Path) -> None:
    with pytest.raises(RolloutConfigError, match="without --rejudge first"):
        asyncio.run(evaluate.rejudge_file(tmp_path / "base.jsonl", [], HalfGrader()))
    assert not (tmp_path / "base.jsonl").exists()  # nothing written


def test_rows_without_a_reference_answer_are_left_out_and_counted(
    data_dir: Path, http_server: LiveServer, tmp_path: Path, token: None, capsys: Any
) -> None:
    # Generated tasks may carry no answer: eval compares the sides on the rows it can grade.
    rows = load_rows(data_dir / "val.jsonl")[:6]
    unlabelled = {row.id for row in rows[:2]}
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        "".join(
            row.model_copy(
                update={"reference_answer": None} if row.id in unlabelled else {}
            ).model_dump_json()
            + "\n"
            for row in rows
        )
    )
    out = tmp_path / "eval"
    with fake_vllm(FakeSettings(script=echo_script)) as served:
        spec = f"{DEFAULT_MODEL}@{served.url}"
        argv = [
            "eval", "--dataset", str(mixed), "--base", spec, "--tuned", spec,
            "--tools-url", http_server.url, "--out", str(out), "--no-kl",
        ]  # fmt: skip
        assert main(argv) == 0
    assert "left out 2 row(s) without a reference_answer" in capsys.readouterr().err
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["id"] for s in samples} == {row.id for row in rows} - unlabelled
