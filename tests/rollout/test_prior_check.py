"""The prior check's buckets, pass@1 / pass@k / headroom, verdicts and the headroom gate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from _servers import fake_vllm

from envs.data.build import build_dataset
from envs.data.rows import load_rows
from rollout.fake_vllm import DEFAULT_MODEL, ChatRequest, FakeSettings
from rollout.prior_check import prior_check
from rollout.trajectory import Trajectory, TrajectoryError, TrajectoryGroup
from testkit import TOKENS, LiveServer
from trainer.cli import main


def group(row: str, rewards: list[float | None]) -> TrajectoryGroup:
    members = [
        Trajectory(
            row_id=row,
            group_id=row,
            sample_index=i,
            env_id="e",
            policy_version="base",
            messages=[],
            reward=r,
            error=None if r is not None else TrajectoryError(kind="tool", message="down"),
        )
        for i, r in enumerate(rewards)
    ]
    return TrajectoryGroup(row, row, members)


# 3 rows x 4 attempts: 5 successes of 12 attempts; 2 of 3 rows solved at least once.
KNOWN = [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]


def known() -> list[TrajectoryGroup]:
    return [group(f"r{i}", list(rewards)) for i, rewards in enumerate(KNOWN)]


def test_buckets_band_and_a_learnable_verdict() -> None:
    groups = [
        group("always", [1.0, 1.0, 1.0, 1.0]),
        group("never", [0.0, 0.0, 0.0, 0.0]),
        group("half", [1.0, 0.0, 1.0, 0.0]),
        group("quarter", [1.0, 0.0, 0.0, 0.5]),  # 0.5 counts as a success at threshold 0.5
        group("failed", [None, 1.0, 0.0, 0.0]),
    ]
    result = prior_check(groups)
    assert (result.always, result.sometimes, result.never) == (1, 3, 1)
    assert result.in_band == 3
    assert result.signal_share == 3 / 5
    assert result.failed_episodes == 1
    assert result.learnable
    assert "RL has something to learn" in result.verdict
    outcome = {o.row_id: o for o in result.outcomes}["failed"]
    assert (outcome.attempts, outcome.successes) == (3, 1)


def test_pass_at_1_pass_at_k_and_headroom_on_known_groups() -> None:
    result = prior_check(known())
    assert result.attempts_per_row == 4
    assert result.pass_at_1 == pytest.approx(5 / 12)
    assert result.pass_at_k == pytest.approx(2 / 3)
    assert result.headroom == pytest.approx(2 / 3 - 5 / 12)
    assert "pass@1 0.417  pass@4 0.667  headroom 0.250 (the most RL" in result.report()


def test_failed_episodes_are_left_out_of_the_pass_rates() -> None:
    # The failed attempt is not a failure to solve: 1 success in 3 scored attempts.
    result = prior_check([group("a", [None, 1.0, 0.0, 0.0]), group("b", [0.0, 0.0])])
    assert result.pass_at_1 == pytest.approx((1 / 3 + 0.0) / 2)
    assert result.pass_at_k == pytest.approx(1 / 2)
    # Per row, not pooled: a row with one scored attempt weighs as much as a row with four.
    tilted = prior_check([group("a", [None, None, None, 0.0]), group("b", [1.0] * 4)])
    assert tilted.pass_at_1 == pytest.approx(0.5)
    assert tilted.headroom == pytest.approx(0.0)


def test_min_headroom_turns_a_learnable_check_into_a_no() -> None:
    assert prior_check(known()).learnable  # a third of the rows are in the band
    assert prior_check(known(), min_headroom=0.2).learnable  # 0.25 is enough
    gated = prior_check(known(), min_headroom=0.3)
    assert not gated.learnable
    assert gated.min_headroom == 0.3
    assert gated.verdict == (
        "too little headroom: 0.250 (pass@4 0.667 - pass@1 0.417) is below the minimum of "
        "0.300 asked for, and RL can win at most about that much on these rows"
    )
    assert f"verdict: {gated.verdict}" in gated.report()
    # Everything else is judged as without the gate.
    plain = prior_check(known()).model_dump(exclude={"verdict", "learnable", "min_headroom"})
    assert gated.model_dump(exclude={"verdict", "learnable", "min_headroom"}) == plain


def test_the_gate_keeps_the_buckets_advice_when_they_already_said_no() -> None:
    result = prior_check([group(f"r{i}", [0.0] * 4) for i in range(10)], min_headroom=0.1)
    assert not result.learnable
    assert result.verdict.startswith("too hard for now")
    assert "too little headroom: 0.000" in result.verdict


def test_a_policy_that_never_succeeds_is_told_to_warm_start() -> None:
    result = prior_check([group(f"r{i}", [0.0] * 4) for i in range(9)] + [group("x", [1, 0])])
    assert not result.learnable
    assert "Warm-start" in result.verdict
    assert "too hard" in result.report()


def test_a_policy_that_always_succeeds_is_too_easy() -> None:
    result = prior_check([group(f"r{i}", [1.0] * 4) for i in range(10)])
    assert not result.learnable
    assert "too easy" in result.verdict
    assert (result.pass_at_1, result.pass_at_k, result.headroom) == (1.0, 1.0, 0.0)


@dataclass(frozen=True)
class EveryOtherEpisode:
    """A policy that knows the answers and gives them on even episodes only: every row is
    solved about half the time. A turn's seed is its episode's seed plus the turn's index."""

    answers: dict[str, str]  # prompt -> reference answer

    def __call__(self, request: ChatRequest) -> str:
        turn = sum(1 for m in request.messages if m.get("role") == "assistant")
        prompt = next(str(m["content"]) for m in request.messages if m.get("role") == "user")
        if ((request.seed or 0) - turn) % 2:
            return "Answer: unknown"
        return f"Answer: {self.answers[prompt]}"


def test_the_cli_gate_flips_the_exit_code(
    corpus_dir: Path,
    http_server: LiveServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build_dataset(corpus_dir, tmp_path / "data", seed=0)
    rows = load_rows(tmp_path / "data" / "train.jsonl")
    script = EveryOtherEpisode({row.prompt: row.answers()[0] for row in rows})
    monkeypatch.setenv("TOOL_BEARER", TOKENS[0])
    with fake_vllm(FakeSettings(script=script)) as server:
        argv = [
            "prior-check", "--dataset", str(tmp_path / "data" / "train.jsonl"),
            "--tools-url", http_server.url, "--base-url", server.url, "--model", DEFAULT_MODEL,
            "--rows", "8", "--attempts", "4", "--no-progress", "--out", str(tmp_path / "p.jsonl"),
        ]  # fmt: skip
        assert main(argv) == 0
        plain = capsys.readouterr().out
        played = server.faults.served
        assert main([*argv, "--min-headroom", "1"]) == 1  # resumes: the same episodes, judged
        gated = capsys.readouterr().out
        assert server.faults.served == played
    assert "verdict: RL has something to learn" in plain
    assert "verdict: too little headroom" in gated and "below the minimum of 1.000" in gated
    pass_line = next(line for line in plain.splitlines() if line.startswith("pass@1 "))
    assert pass_line in gated  # the same figures, only the verdict differs
