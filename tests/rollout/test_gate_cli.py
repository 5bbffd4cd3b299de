"""`toolgym eval --gate` through the real CLI: exit 0, 1 and 2, a probe set, what lands on disk."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _servers import fake_vllm

from envs.data.build import build_dataset
from envs.data.rows import load_rows
from rollout.fake_vllm import DEFAULT_MODEL, ChatRequest, FakeSettings, echo_script
from rollout.fake_vllm import message_text as text_of
from rollout.store import read_trajectories
from testkit import TOKENS, LiveServer
from trainer.cli import main


@pytest.fixture(scope="module")
def data_dir(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gate-data")
    build_dataset(corpus_dir, out, seed=0)
    return out


@pytest.fixture
def token() -> Iterator[None]:
    os.environ["TOOL_BEARER"] = TOKENS[0]
    yield
    del os.environ["TOOL_BEARER"]


@dataclass
class Knows:
    """Answers the prompts it knows the answers to; echoes the others (never right)."""

    answers: dict[str, str]  # prompt -> reference answer

    def __call__(self, request: ChatRequest) -> str:
        prompt = next(text_of(m["content"]) for m in request.messages if m["role"] == "user")
        return f"Answer: {self.answers[prompt]}" if prompt in self.answers else echo_script(request)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_exit_codes_0_1_2_through_the_cli(
    data_dir: Path,
    http_server: LiveServer,
    tmp_path: Path,
    token: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "eval"
    passing = write(tmp_path / "pass.yaml", "overall_delta_lower_bound_min: 0.0\n")
    failing = write(
        tmp_path / "fail.yaml", "overall_delta_lower_bound_min: 0.1\nregression_flips_max: 0\n"
    )
    unknown_rule = write(tmp_path / "rule.yaml", "max_regressions: 3\n")
    unknown_key = write(
        tmp_path / "key.yaml", "slice_delta_lower_bound_min: -0.1\nslice_keys: [dificulty]\n"
    )
    needs_probe = write(tmp_path / "probe.yaml", "probe_reward_drop_max: 0.05\n")
    with fake_vllm(FakeSettings(script=echo_script)) as server:  # base == tuned: delta 0
        policy = f"{DEFAULT_MODEL}@{server.url}"
        argv = [
            "eval", "--data-dir", str(data_dir), "--n", "6", "--base", policy, "--tuned", policy,
            "--tools-url", http_server.url, "--out", str(out), "--no-progress",
        ]  # fmt: skip
        assert main([*argv, "--gate", str(passing)]) == 0
        said = capsys.readouterr().out
        assert "gate " + str(passing) + ": PASS" in said
        assert "pass@1 delta +0.000 [+0.000, +0.000]" in said
        assert "KL(tuned || base): unavailable (served policies return logprobs" in said

        assert main([*argv, "--gate", str(failing)]) == 1  # resumes: nothing is played again
        said = capsys.readouterr().out
        assert f"gate {failing}: FAIL (1 of 2 rules failed)" in said
        assert "  FAIL overall_delta_lower_bound_min: +0.000 (threshold +0.100): pass@1" in said

        served = server.faults.served
        for gate, message in [
            (unknown_rule, "unknown rule 'max_regressions' (valid rules: overall_delta_lower"),
            (unknown_key, "slice_keys: unknown metadata key 'dificulty' (valid: companies, "),
            (needs_probe, "probe_reward_drop_max needs a probe set (--probe-dataset"),
        ]:
            assert main([*argv, "--out", str(tmp_path / "other"), "--gate", str(gate)]) == 2
            err = capsys.readouterr().err
            assert message in err and len(err.strip().splitlines()) == 1, err
        assert server.faults.served == served  # refused before a single model call
    release = json.loads((out / "release.json").read_text())
    assert release["exit_code"] == 1 and release["gate"]["source"] == str(failing)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(s["delta_ci"]["overall"] == [0.0, 0.0] for s in samples)
    assert all(s["success_delta"] == 0.0 and s["flip"] is None for s in samples)
    html = (out / "report.html").read_text()
    assert "<h2>Release gate" in html and "Is the difference real?" in html
    assert "<h2>Forgetting</h2>" in html


def test_a_probe_drop_fails_the_gate_and_its_rollouts_are_kept(
    data_dir: Path,
    http_server: LiveServer,
    tmp_path: Path,
    token: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The probe: rows the policy was not evaluated on, played by both sides with the same
    seeds; base knows their answers, tuned has forgotten them."""
    probe_rows = data_dir / "train.jsonl"
    knows = Knows({row.prompt: row.answers()[0] for row in load_rows(probe_rows)})
    gate = write(tmp_path / "gate.yaml", "probe_reward_drop_max: 0.05\nregression_flips_max: 0\n")
    out = tmp_path / "eval"
    with (
        fake_vllm(FakeSettings(script=knows)) as base,
        fake_vllm(FakeSettings(script=echo_script)) as tuned,
    ):
        argv = [
            "eval", "--data-dir", str(data_dir), "--n", "4",
            "--base", f"{DEFAULT_MODEL}@{base.url}", "--tuned", f"{DEFAULT_MODEL}@{tuned.url}",
            "--tools-url", http_server.url, "--out", str(out), "--no-progress",
            "--probe-env", "toolgym/FilingsQA-v0", "--probe-dataset", str(probe_rows),
            "--probe-rows", "5", "--gate", str(gate),
        ]  # fmt: skip
        assert main(argv) == 1
    said = capsys.readouterr().out
    assert f"gate {gate}: FAIL (1 of 2 rules failed)" in said
    assert "  FAIL probe_reward_drop_max: +0.500 (threshold +0.050): toolgym/FilingsQA-v0: " in said
    assert "  pass regression_flips_max: 0 (threshold 0)" in said  # the main rows: both echo
    assert "format errors, probe: 0.000 -> 0.000 of episodes" in said
    base_probe = read_trajectories(out / "probe" / "base.jsonl").trajectories
    tuned_probe = read_trajectories(out / "probe" / "tuned.jsonl").trajectories
    assert len(base_probe) == len(tuned_probe) == 5
    assert {t.row_id: t.seed for t in base_probe} == {t.row_id: t.seed for t in tuned_probe}
    # Right answers, found without the tools the rows ask for: half credit; echoes get none.
    assert [t.reward for t in base_probe] == [0.5] * 5
    assert [t.reward for t in tuned_probe] == [0.0] * 5
    release = json.loads((out / "release.json").read_text())
    assert release["forgetting"]["probe"]["rows"] == 5
    assert [f["set"] for f in release["forgetting"]["formats"]] == ["main", "probe"]


def test_in_process_policies_get_their_kl_measured_and_gated(
    data_dir: Path,
    http_server: LiveServer,
    tmp_path: Path,
    token: None,
    tiny_policy_dir: Path,
    tiny_lora_adapter_dir: Path,
) -> None:
    out = tmp_path / "eval"
    argv = [
        "eval", "--data-dir", str(data_dir), "--n", "2", "--max-tokens", "8",
        "--base", str(tiny_policy_dir), "--tuned", f"{tiny_policy_dir}+{tiny_lora_adapter_dir}",
        "--tools-url", http_server.url, "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert main([*argv, "--gate", str(write(tmp_path / "loose.yaml", "kl_max: 1000\n"))]) == 0
    kl = json.loads((out / "release.json").read_text())["forgetting"]["kl"]
    assert kl["value"] > 0 and kl["tokens"] > 0 and kl["unavailable"] is None
    # The same trajectories (resumed, not replayed) against a gate the adapter has moved past.
    assert main([*argv, "--gate", str(write(tmp_path / "tight.yaml", "kl_max: 0\n"))]) == 1
