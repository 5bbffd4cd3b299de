"""The vLLM launcher, command line and adapter client; real processes stand in for `vllm`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _servers import fake_vllm, free_port

from rollout.errors import AdapterError, LaunchError
from rollout.fake_vllm import DEFAULT_MODEL, FakeSettings
from rollout.vllm import (
    AdapterClient,
    VllmServeConfig,
    launch,
    redacted,
    round_lora_rank,
    tool_parser_for,
    vllm_command,
    vllm_environment,
)
from rollout.vllm_cli import main as cli_main
from testkit import log_tail

REPO = Path(__file__).resolve().parents[2]


def executable(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def fake_vllm_bin(tmp_path: Path) -> str:
    """A `vllm` that runs the fake server with whatever flags it is given."""
    return executable(
        tmp_path / "vllm",
        f'PYTHONPATH="{REPO}" exec "{sys.executable}" -m rollout.fake_vllm "$@"',
    )


def adapter(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    return path


@pytest.mark.parametrize(
    ("model", "parser"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", "hermes"),
        ("/models/qwen3-8b", "hermes"),
        ("Qwen/QwQ-32B", "hermes"),
        ("NousResearch/Hermes-3-Llama-3.1-8B", "hermes"),
        ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "qwen3_coder"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3_json"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
    ],
)
def test_tool_parser_for(model: str, parser: str) -> None:
    assert tool_parser_for(model) == parser


def test_unknown_model_family_asks_for_a_parser() -> None:
    with pytest.raises(LaunchError, match="--tool-call-parser"):
        tool_parser_for("google/gemma-2-9b-it")


def test_round_lora_rank() -> None:
    cases = {1: 1, 2: 8, 8: 8, 9: 16, 33: 64, 256: 256, 300: 320, 321: 512, 512: 512}
    assert {rank: round_lora_rank(rank) for rank in cases} == cases
    for bad in (0, 513):
        with pytest.raises(LaunchError):
            round_lora_rank(bad)


def test_vllm_command_with_lora_and_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sekret-key")
    config = VllmServeConfig(
        model="Qwen/Qwen2.5-1.5B-Instruct",
        port=8100,
        lora_modules={"v0": "/adapters/v0"},
        lora_rank=12,
        max_loras=3,
        max_cpu_loras=6,
        max_model_len=8192,
        extra_args=["--enforce-eager"],
        vllm_bin="/opt/vllm/bin/vllm",
    )
    command = vllm_command(config)
    text = " ".join(command)
    assert command[:3] == ["/opt/vllm/bin/vllm", "serve", "Qwen/Qwen2.5-1.5B-Instruct"]
    for part in (
        "--host 127.0.0.1 --port 8100",
        "--enable-auto-tool-choice --tool-call-parser hermes",
        "--max-logprobs 20 --logprobs-mode processed_logprobs",
        "--enable-lora --max-lora-rank 16 --max-loras 3 --max-cpu-loras 6",
        "--lora-modules v0=/adapters/v0",
        "--max-model-len 8192",
        "--api-key sekret-key",
    ):
        assert part in text
    assert command[-1] == "--enforce-eager" and "--return-tokens-as-token-ids" not in command
    shown = " ".join(redacted(command))
    assert "sekret-key" not in shown and "--api-key ***" in shown
    assert vllm_environment({})["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"


def test_vllm_command_without_lora_or_key_and_in_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    plain = vllm_command(VllmServeConfig(model="meta-llama/Llama-3.2-3B-Instruct"))
    assert "--enable-lora" not in plain and "--api-key" not in plain
    assert plain[plain.index("--tool-call-parser") + 1] == "llama3_json"
    docker = vllm_command(
        VllmServeConfig(model="Qwen/Qwen3-8B", enable_lora=True, docker_image="vllm/vllm-openai")
    )
    image = docker.index("vllm/vllm-openai")
    assert docker[:2] == ["docker", "run"] and "--gpus" in docker[:image]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1" in docker[:image]
    assert docker[image + 1] == "Qwen/Qwen3-8B" and "--max-lora-rank" in docker


def test_launch_waits_for_health_of_a_real_process(tmp_path: Path) -> None:
    port = free_port()
    config = VllmServeConfig(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        port=port,
        lora_modules={"start": str(adapter(tmp_path, "start"))},
        lora_rank=8,
        vllm_bin=fake_vllm_bin(tmp_path),
    )
    with launch(config, tmp_path / "vllm.log", health_timeout_s=30, poll_s=0.1) as server:
        assert server.url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{server.url}/health").status_code == 200

        async def publish() -> list[str]:
            client = AdapterClient(server.url)
            try:
                await client.publish(adapter(tmp_path, "v1"), "policy-v1")
                return await client.list_models()
            finally:
                await client.aclose()

        assert asyncio.run(publish()) == ["Qwen/Qwen2.5-0.5B-Instruct", "start", "policy-v1"]
    assert server.process.returncode is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")


def test_launch_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    script = executable(tmp_path / "vllm", 'echo "RuntimeError: CUDA out of memory"; exit 1')
    config = VllmServeConfig(model="Qwen/Qwen2.5-0.5B-Instruct", port=free_port(), vllm_bin=script)
    started = time.perf_counter()
    with pytest.raises(LaunchError, match="code 1") as info:
        launch(config, tmp_path / "vllm.log", health_timeout_s=60, poll_s=0.05)
    assert "CUDA out of memory" in str(info.value) and time.perf_counter() - started < 5


def test_launch_gives_up_after_the_health_timeout(tmp_path: Path) -> None:
    script = executable(tmp_path / "vllm", "echo loading weights; exec sleep 60")
    config = VllmServeConfig(model="Qwen/Qwen2.5-0.5B-Instruct", port=free_port(), vllm_bin=script)
    started = time.perf_counter()
    with pytest.raises(LaunchError, match="not healthy") as info:
        launch(config, tmp_path / "vllm.log", health_timeout_s=0.5, poll_s=0.05)
    assert "loading weights" in str(info.value) and time.perf_counter() - started < 5


def test_launch_without_vllm_says_how_to_get_it(tmp_path: Path) -> None:
    config = VllmServeConfig(model="Qwen/Qwen3-8B", vllm_bin=str(tmp_path / "missing"))
    with pytest.raises(LaunchError, match="--vllm-bin"):
        launch(config, tmp_path / "vllm.log")


def test_publish_loads_the_new_version_then_unloads_the_previous(tmp_path: Path) -> None:
    async def run(url: str) -> list[list[str]]:
        client = AdapterClient(url + "/v1")
        seen = []
        try:
            for version in ("v1", "v2", "v3"):
                assert await client.publish(adapter(tmp_path, version), f"policy-{version}")
                seen.append(await client.list_models())
            assert client.published == "policy-v3"
            with pytest.raises(AdapterError, match="No adapter found"):
                await client.load("policy-v4", tmp_path / "nowhere")
            with pytest.raises(AdapterError, match="cannot be found"):
                await client.unload("policy-v1")
            return seen
        finally:
            await client.aclose()

    with fake_vllm(FakeSettings(allow_runtime_lora=True)) as live:
        seen = asyncio.run(run(live.url))
    assert seen == [[DEFAULT_MODEL, f"policy-{v}"] for v in ("v1", "v2", "v3")]


def test_adapter_routes_missing_means_runtime_loading_is_off(tmp_path: Path) -> None:
    async def run(url: str) -> None:
        client = AdapterClient(url)
        try:
            await client.publish(adapter(tmp_path, "v1"), "policy-v1")
        finally:
            await client.aclose()

    with fake_vllm() as live, pytest.raises(AdapterError) as info:
        asyncio.run(run(live.url))
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1" in str(info.value)


def test_cli_dry_run_prints_the_redacted_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sekret-key")
    argv = ["vllm", "serve", "--model", "Qwen/Qwen3-8B", "--lora", "a=/x", "--lora-rank", "40"]
    assert cli_main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1" in out and "--max-lora-rank 64" in out
    assert "--lora-modules a=/x" in out and "sekret-key" not in out
    assert cli_main([*argv[:4], "--lora", "no-path", "--dry-run"]) == 1


def test_cli_serve_runs_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "rollout.vllm_cli", "vllm", "serve"]
    command += ["--model", "Qwen/Qwen2.5-0.5B-Instruct", "--port", str(port)]
    log = tmp_path / "vllm.log"
    command += ["--vllm-bin", fake_vllm_bin(tmp_path), "--log", str(log)]
    # The CLI's own deadline bounds the readline below (it prints, or exits: EOF): one
    # minute, not its 15-minute default for real model loads.
    command += ["--health-timeout", "60"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        assert cli.stdout is not None
        lines = [cli.stdout.readline() for _ in range(2)]
        why = f"exit code {cli.poll()}{log_tail(log)}"
        assert f"healthy at http://127.0.0.1:{port}" in lines[1], f"{lines!r}; {why}"
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=20) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health")
