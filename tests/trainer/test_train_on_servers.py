"""`toolgym train` with `policy.backend: vllm` on TWO servers (the issue's reproduction).

The trainer trains the tiny model here while every rollout comes from two fake vLLM servers
(real uvicorn on 127.0.0.1). Each published version must be loaded on both before any
rollout names it: with the adapter loaded on one server only, half the rollouts got
"404 The model `v0000` does not exist" and the run stopped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import yaml
from transformers import AutoTokenizer

from envs.graders.base import GradeResult, verdict_for
from envs.tool_env import make_tool_env
from rollout.fake_chat import SPECIAL_IDS
from rollout.fake_vllm import ChatRequest, FakeSettings, FakeVllm, create_app
from rollout.store import read_trajectories
from testkit import LiveServer, start_server
from trainer.cli import main

ENV_ID = "toolgym-test/DigitsOnServers-v0"
TOOL = {
    "type": "function",
    "function": {"name": "noop", "description": "Does nothing.", "parameters": {}},
}


class DigitShareGrader:
    """Reward = the share of the answer's visible characters that are digits."""

    async def grade(self, row: Any, answer: str, tools_used: set[str]) -> GradeResult:
        visible = "".join(answer.split())
        score = sum(c.isdigit() for c in visible) / len(visible) if visible else 0.0
        return GradeResult(score=score, verdict=verdict_for(score))


def make_env(**kwargs: Any) -> Any:
    return make_tool_env(grader=DigitShareGrader(), tools_url="http://unused", **kwargs)


def digits_now_and_then(request: ChatRequest) -> str:
    """Rewards that differ inside a group (episode seeds differ), so every step trains."""
    seed = request.seed or 0
    return f"{seed % 997}" if seed % 2 else "no idea"


@pytest.fixture(autouse=True, scope="module")
def registered() -> None:
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point=make_env, nondeterministic=True)


@pytest.fixture
def two_servers(tiny_policy_dir: Path) -> Iterator[list[tuple[LiveServer, FakeVllm]]]:
    settings = FakeSettings(
        model=str(tiny_policy_dir),
        script=digits_now_and_then,
        allow_runtime_lora=True,
        byte_tokens=True,  # ids the tiny model's vocabulary covers: the trainer trains on them
    )
    with ExitStack() as stack:
        servers = []
        for _ in range(2):
            app = create_app(settings)
            live = start_server(app)
            stack.callback(live.stop)
            servers.append((live, app.state.fake))
        yield servers


def write_config(tmp_path: Path, model: Path, urls: list[str], out: Path) -> Path:
    rows = [
        {"id": f"d{i}", "prompt": f"Say a number ({i}).", "reference_answer": "7",
         "tools": [TOOL], "metadata": {"task_type": "digits", "difficulty": "easy"}}
        for i in range(4)
    ]  # fmt: skip
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {
        "base_model": str(model),
        "environment": {"id": ENV_ID, "limits": {"max_turns": 1}},
        "train_dataset": str(dataset),
        "policy": {"backend": "vllm", "base_urls": [f"{url}/v1" for url in urls],
                   "max_tokens_per_turn": 16, "concurrency": 8},
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "group_size": 4,
        "batch_size": 2,
        "steps": 2,
        "learning_rate": 1e-3,
        "max_failed_episodes": 0,  # one refused request is a failure of this test
        "output_dir": str(out),
        "seed": 0,
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_on_two_vllm_servers_publishes_every_version_to_both(
    tiny_policy_dir: Path, two_servers: list[tuple[LiveServer, FakeVllm]], tmp_path: Path
) -> None:
    vocabulary = len(AutoTokenizer.from_pretrained(tiny_policy_dir, local_files_only=True))
    assert max(SPECIAL_IDS.values()) < vocabulary  # byte ids and specials fit the model
    out = tmp_path / "run"
    path = write_config(tmp_path, tiny_policy_dir, [live.url for live, _ in two_servers], out)

    assert main(["train", "--config", str(path), "--quiet"]) == 0

    for live, fake in two_servers:
        asked = Counter(request.model for request in fake.history)
        # v0000 played step 1 and v0001 step 2, on this server as on the other
        assert set(asked) == {"v0000", "v0001"} and min(asked.values()) >= 1, (live.url, asked)
        assert fake.faults.received == fake.faults.served  # no request refused (404)
        assert list(fake.adapters) == ["v0002"]  # the last version; each previous unloaded
    played = [
        t
        for p in sorted((out / "rollouts").glob("*.jsonl"))
        for t in read_trajectories(p).trajectories
    ]
    assert len(played) == 2 * 2 * 4 and not any(t.failed for t in played)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and all(s["signal_groups"] >= 1 for s in steps)


def test_train_stops_in_one_line_when_no_server_can_load_the_adapter(
    tiny_policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both servers lack the runtime adapter routes: the first publish (v0000) fails on each,
    so the run stops before any rollout, naming both. (Before: only the first was named.)"""
    settings = FakeSettings(model=str(tiny_policy_dir), byte_tokens=True)
    with ExitStack() as stack:
        urls = []
        for _ in range(2):
            live = start_server(create_app(settings))
            stack.callback(live.stop)
            urls.append(live.url)
        path = write_config(tmp_path, tiny_policy_dir, urls, tmp_path / "run")
        assert main(["train", "--config", str(path), "--quiet"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("toolgym: error: adapter 'v0000' could not be loaded on any policy")
    assert all(f"{url}: {url} has no /v1/load_lora_adapter route" in last for url in urls)
