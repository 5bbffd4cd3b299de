"""`toolgym demo run` end to end, shrunk: every step runs for real, only shorter."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import gymnasium as gym
import httpx
import pytest

from trainer.cli import build_parser
from trainer.demo import ENV_ID, DemoSettings, run_demo
from trainer.demo_policy import PolicyShape
from trainer.warmstart import WarmStartSettings


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 1 min on 2 idle cores; loaded CI machines take several times that
def test_the_demo_runs_every_step_and_stops_its_servers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the demo hands its settings to each step: it neither needs nor sets these variables
    monkeypatch.delenv("TOOL_BEARER", raising=False)
    monkeypatch.delenv("TOOLGYM_ENVS", raising=False)
    settings = DemoSettings(
        workdir=tmp_path / "demo",
        lookup_rows=200,
        shape=PolicyShape(vocab_size=600, hidden_size=32, num_layers=1, num_heads=2),
        warm=WarmStartSettings(turn_steps=3, max_steps=3, batch_size=8, turn_batch_size=8),
        prior_rows=2,
        prior_attempts=2,
        require_signal=False,  # three SFT steps teach nothing; the gate is tested elsewhere
        grpo_overrides=["steps=1", "batch_size=2", "group_size=2", "eval_rows=2"],
        eval_rows=3,
        eval_attempts=1,
    )
    try:
        result = run_demo(settings)
    finally:
        gym.registry.pop(ENV_ID, None)
    assert "TOOL_BEARER" not in os.environ and "TOOLGYM_ENVS" not in os.environ
    out = capsys.readouterr().out
    for step in range(1, 8):
        assert f"[{step}/7]" in out
    for verb in ("corpus synth", "data build", "index train-model", "index build", "prior-check",
                 "train --config", "eval --env"):  # fmt: skip
        assert f"$ toolgym {verb}" in out
    # every command it printed is one a user can type: `toolgym` parses it
    parser = build_parser()
    for line in out.splitlines():
        if line.startswith("$ toolgym "):
            parser.parse_args(shlex.split(line.removeprefix("$ toolgym ")))
    assert "export TOOL_BEARER=" in out
    work = settings.workdir
    summary = json.loads((work / "demo-summary.json").read_text())
    assert summary["recall_at_5"] >= 0.9
    assert summary["val_rows"] == 3
    assert 0.0 <= summary["val_reward_base"] <= 1.0
    assert summary["val_headroom_before_grpo"]["rows"] == 2
    head = summary["val_headroom_before_grpo"]
    assert head["headroom"] == pytest.approx(head["pass_at_2"] - head["pass_at_1"], abs=1e-3)
    assert [step for step, _ in summary["val_curve"]] == [0, 1]  # before, and after the step
    assert Path(result.paths["picture"]).is_file()
    assert "val reward while training:" in out and "rows improved" in out
    assert Path(result.paths["report"]).is_file()
    assert Path(result.paths["training curves"]).is_file()
    assert (Path(result.paths["adapter"]) / "adapter_config.json").is_file()
    demos = (work / "demos.jsonl").read_text().splitlines()
    # demonstrations are right, except those slipped on purpose (the scale misread)
    assert demos and all(json.loads(d)["reward"] == 1.0 for d in demos if not json.loads(d)["slip"])
    # the servers it started are gone
    logs = (work / "logs" / "tools-http.log").read_text()
    assert "toolgym http server on http://127.0.0.1:" in logs
    port = int(out.split("HTTP http://127.0.0.1:")[1].split()[0])
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
