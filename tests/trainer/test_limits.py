"""Episode limits: the trainer plays the registered episode, overridden key by key, and the
keys that used to mean several things are refused with where they went."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

from envs.episode import Limits
from trainer.config import load_config
from trainer.errors import ConfigError
from trainer.train import make_pool

ENV_ID = "toolgym-test/Limits-v0"
REGISTERED = {"max_turns": 3, "max_tool_calls": 2}
TOOL = {
    "type": "function",
    "function": {"name": "noop", "description": "Does nothing.", "parameters": {}},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("limits") / "rows.jsonl"
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"Say {i}.",
            "reference_answer": str(i),
            "tools": [TOOL],
            "metadata": {"task_type": "lookup", "difficulty": "easy"},
        }
        for i in range(2)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True, scope="module")
def registered(dataset: Path) -> None:
    if ENV_ID not in gym.registry:
        kwargs = {"dataset": str(dataset), "tools_url": "http://unused", "limits": REGISTERED}
        gym.register(ENV_ID, entry_point="envs.tool_env:make_tool_env", kwargs=kwargs)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"base_model: m\nenvironment:\n  id: {ENV_ID}\n{text}")
    return path


def pool_limits(path: Path, dataset: Path) -> Any:
    pool = make_pool(load_config(path), dataset)
    env = pool.factory()()  # the environment the trainer's episodes are played in
    return env.limits  # type: ignore[attr-defined]


def test_an_override_changes_only_its_own_key(tmp_path: Path, dataset: Path) -> None:
    path = write_config(tmp_path, "  limits: {max_tool_calls: 5}\n")
    limits = pool_limits(path, dataset)
    assert limits == Limits(max_turns=3, max_tool_calls=5)  # max_turns as registered


def test_without_overrides_training_plays_what_eval_plays(tmp_path: Path, dataset: Path) -> None:
    made = gym.make(ENV_ID, disable_env_checker=True).unwrapped  # as eval makes it
    evaluated = made.limits  # type: ignore[attr-defined]
    assert evaluated == Limits(**REGISTERED)
    assert pool_limits(write_config(tmp_path, ""), dataset) == evaluated


def test_the_demo_trains_on_the_registered_episode() -> None:
    # trainer/demo.py registers max_tool_calls and max_turns; `toolgym eval` plays those.
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo-cpu.yaml")
    assert config.environment.limits == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "  limits: {max_turn: 3}\n",
            "environment.limits: unknown key 'max_turn' "
            "(known: max_tool_calls, max_turns, max_tokens)",
        ),
        ("  limits: {max_turns: 0}\n", "environment.limits: max_turns"),
        ("  kwargs: {limits: {max_turns: 3}}\n", "environment.kwargs: limits: set them in"),
        ("max_tool_calls: 6\n", "max_tool_calls: moved to environment.limits.max_tool_calls"),
        (
            "max_trajectory_tokens: 4096\n",
            "max_trajectory_tokens: moved: the trainer's truncation is max_sequence_tokens, "
            "the episode's token budget is environment.limits.max_tokens",
        ),
    ],
)
def test_limit_mistakes_are_refused_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text))
    message = str(caught.value)
    assert expected in message and "\n" not in message


def test_the_cli_says_where_a_key_moved(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.cli import main

    assert main(["train", "--config", str(write_config(tmp_path, "max_tool_calls: 6\n"))]) == 2
    err = capsys.readouterr().err
    assert "moved to environment.limits.max_tool_calls" in err and err.count("\n") == 1


def test_a_list_of_tool_server_replicas_reaches_the_trainers_client(
    tmp_path: Path, dataset: Path
) -> None:
    urls = ["http://127.0.0.1:18080", "http://127.0.0.1:18081"]
    path = write_config(tmp_path, f"  tools_url: [{urls[0]}, {urls[1]}]\n")
    env = make_pool(load_config(path), dataset).factory()()
    assert env.client.replicas.urls == tuple(urls)  # type: ignore[attr-defined]
