"""Run configurations: the shipped recipes load, and mistakes name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import load_config
from trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# Every shipped recipe; gate-*.yaml are `toolgym eval --gate` files (tests/rollout/test_gate.py).
TRAIN_CONFIGS = sorted(
    p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("gate-")
)


@pytest.mark.parametrize("name", ["gpu-qwen2.5-3b.yaml", "cpu-tiny.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(ROOT / "configs" / name)
    assert config.group_size == 8
    assert config.output_dir.is_absolute()  # relative to the file


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    load_config(path)


def test_the_ruler_example_scores_with_a_judge_alone() -> None:
    config = load_config(ROOT / "configs" / "ruler-example.yaml")
    assert config.reward.ruler is not None and config.reward.ruler_weight == 1.0
    assert not config.reward.needs_references  # its rows need no reference answer
    assert config.reward.ruler.cache is not None  # relative to the file, as output_dir
    assert config.reward.ruler.cache.resolve() == ROOT / "runs/ruler-example/judge-cache.jsonl"


def test_overrides_reach_nested_keys() -> None:
    config = load_config(
        ROOT / "configs" / "cpu-tiny.yaml",
        ["learning_rate=2e-4", "policy.temperature=0.7", "lora.target_modules=[q_proj]"],
    )
    assert config.learning_rate == 2e-4
    assert config.policy.temperature == 0.7
    assert config.lora.target_modules == ["q_proj"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("base_model: m\nlearning_rat: 1e-5\n", "learning_rat: unknown key"),
        ("group_size: 8\n", "base_model: required"),
        ("base_model: m\ngroup_size: 1\n", "group_size: Input should be greater than or equal"),
        ("base_model: m\nrefill_rounds: -1\n", "refill_rounds: Input should be greater than or"),
        ("base_model: m\npolicy: {backend: vllm}\n", "policy.base_urls"),
        ("base_model: m\nloss_type: ppo\n", "loss_type"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("base_model: [unclosed\n", "not valid YAML"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        load_config(path)


def test_a_bad_override_says_how_to_write_one(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("base_model: m\n")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["learning_rate"])


def test_the_cli_reports_a_bad_config_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.cli import main

    path = tmp_path / "run.yaml"
    path.write_text("base_model: m\nepochs: zero\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("toolgym: error:") and "epochs:" in err and "Traceback" not in err
