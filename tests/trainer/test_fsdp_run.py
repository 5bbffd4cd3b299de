"""`toolgym train --nproc-per-node 2` with `data_parallel: fsdp`, as a user runs it on CPU.

Two gloo ranks train the tiny model sharded while a fake vLLM server (in this process) plays
every rollout. The run must checkpoint the optimizer state gathered from the shards (keyed by
parameter name: a ddp one is keyed by index), save whole adapters that PEFT loads, and resume
from that checkpoint to the end. The ranks register the environment through a plugin on
PYTHONPATH (a `toolgym.envs` entry point), as in test_distributed_run.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pluginkit import run_env, run_toolgym, write_config, write_plugin, write_rows
from rollout.fake_vllm import ChatRequest, FakeSettings, create_app
from testkit import LiveServer, start_server

ENV_ID = "toolgym-test/FsdpDigits-v0"
GRADER = """

class DigitShareGrader:
    async def grade(self, row, answer, tools_used):
        visible = "".join(answer.split())
        score = sum(c.isdigit() for c in visible) / len(visible) if visible else 0.0
        return GradeResult(score=score, verdict=verdict_for(score))
"""
RUN_WAIT_S = 480  # seconds on a free machine; minutes on one shared many ways


def digits_now_and_then(request: ChatRequest) -> str:
    """Rewards that differ inside a group (episode seeds differ), so every step trains."""
    seed = request.seed or 0
    return f"{seed % 997}" if seed % 2 else "no idea"


@pytest.fixture
def servers(tiny_policy_dir: Path) -> Iterator[Callable[[], LiveServer]]:
    """Starts fake vLLM servers, each with no adapter loaded yet; stops them all at the end."""
    settings = FakeSettings(
        model=str(tiny_policy_dir),
        script=digits_now_and_then,
        allow_runtime_lora=True,
        byte_tokens=True,  # ids the tiny model's vocabulary covers: the trainer trains on them
    )
    started: list[LiveServer] = []

    def start() -> LiveServer:
        started.append(start_server(create_app(settings)))
        return started[-1]

    try:
        yield start
    finally:
        for live in started:
            live.stop()


def write_run(root: Path, model: Path, url: str) -> tuple[Path, dict[str, str]]:
    """-> (the run's config, the environment its processes need)."""
    plugin = write_plugin(root, "fsdp_digits", ENV_ID, GRADER, "DigitShareGrader")
    write_rows(root / "rows.jsonl", "digits", "Say a number", "7", 4)
    config = {
        "base_model": str(model),
        "data_parallel": "fsdp",
        "environment": {"id": ENV_ID, "limits": {"max_turns": 1}},
        "train_dataset": "rows.jsonl",
        "policy": {"backend": "vllm", "base_urls": [f"{url}/v1"], "max_tokens_per_turn": 16,
                   "concurrency": 8},
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "group_size": 4,
        "batch_size": 2,
        # at most 8 sequences a step: one micro-batch on each rank whatever the shares
        "micro_batch_size": 4,
        "steps": 2,
        "learning_rate": 1e-3,
        "max_failed_episodes": 0,
        "output_dir": "run",
        "seed": 0,
        "distributed_timeout_s": 120,
    }  # fmt: skip
    return write_config(root / "train.yaml", config), run_env(plugin)


def toolgym(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_toolgym(env, RUN_WAIT_S, *args)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_sharded_run_checkpoints_gathered_state_and_resumes_to_the_end(
    tiny_policy_dir: Path, servers: Callable[[], LiveServer], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, env = write_run(tmp_path, tiny_policy_dir, servers().url)
    out = tmp_path / "run"
    first = toolgym(env, "train", "--config", str(config), "--nproc-per-node", "2", "--quiet")
    assert first.returncode == 0, first.stderr[-3000:]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert (state["step"], state["world_size"], state["data_parallel"]) == (2, 2, "fsdp")
    saved = torch.load(out / "checkpoint" / "optimizer.pt", weights_only=False)["optimizer"]
    names = set(saved["state"])
    # gathered from the shards: by name, every LoRA weight, whole (rank 0's half would not do)
    assert names and all(".lora_" in n for n in names), names
    adapter = load_file(out / "adapters" / "v0002" / "adapter_model.safetensors")
    assert len(names) == len(adapter)
    for name, moments in saved["state"].items():
        # PEFT saves the adapter without its name ("default")
        assert moments["exp_avg"].shape == adapter[name.replace(".default", "")].shape, name
    base = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    PeftModel.from_pretrained(base, out / "adapters" / "v0002")  # a whole adapter: it loads

    # resumed as ddp: refused in one line before any rank starts
    ddp = toolgym(env, "train", "--config", str(config), "--resume", "--nproc-per-node", "2",
                  "--set", "data_parallel=ddp", "--quiet")  # fmt: skip
    assert ddp.returncode == 2 and ddp.stderr.strip().count("\n") == 0, ddp.stderr
    assert "trained with data_parallel: fsdp, not ddp" in ddp.stderr

    # the same layout: the sharded optimizer state is restored and the run goes on (on a
    # fresh server, as after a restart: this one still holds v0002, which it would refuse)
    urls = f"policy.base_urls=[{servers().url}/v1]"
    resumed = toolgym(env, "train", "--config", str(config), "--resume", "--nproc-per-node",
                      "2", "--set", "steps=3", "--set", urls, "--quiet")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["updates"] == 1 and r["signal_groups"] > 0 for r in records), records
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
    assert (out / "adapters" / "v0003" / "adapter_model.safetensors").is_file()
