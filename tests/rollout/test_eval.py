"""`toolgym eval` end to end: two fake vLLM servers as base and tuned, a real tool server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _servers import fake_vllm

from envs.data.build import build_dataset
from rollout.fake_vllm import DEFAULT_MODEL, FakeSettings, echo_script
from rollout.store import read_trajectories
from testkit import TOKENS, LiveServer
from trainer.cli import main


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
