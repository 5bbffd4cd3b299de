"""`toolgym vllm serve --servers N --tensor-parallel-size T`: the commands and GPUs each server
gets, the URLs to use, one-line errors, and real processes (the fake vLLM) started and stopped
together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from _servers import free_port

from rollout.errors import LaunchError
from rollout.vllm import VllmServeConfig
from rollout.vllm_cli import main as cli_main
from rollout.vllm_group import launch_group, plan_servers
from testkit import log_tail

REPO = Path(__file__).resolve().parents[2]
MODEL = ["vllm", "serve", "--model", "Qwen/Qwen2.5-7B-Instruct", "--enable-lora"]


def dry_run(capsys: pytest.CaptureFixture[str], *flags: str) -> list[str]:
    assert cli_main([*MODEL, *flags, "--dry-run"]) == 0
    return capsys.readouterr().out.splitlines()


def fake_vllm_bin(tmp_path: Path, fail_on_port: int | None = None) -> str:
    """A `vllm` that says which GPUs it was given, then runs the fake server."""
    fail = f'case " $* " in *" --port {fail_on_port} "*) echo "CUDA error"; exit 3;; esac\n'
    script = tmp_path / "vllm"
    script.write_text(
        "#!/bin/sh\n"
        'echo "gpus=$CUDA_VISIBLE_DEVICES"\n'
        + (fail if fail_on_port else "")
        + f'PYTHONPATH="{REPO}" exec "{sys.executable}" -m rollout.fake_vllm "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


def test_one_server_per_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    out = dry_run(capsys, "--servers", "4", "--gpus", "0,1,2,3", "--port", "9000")
    commands = [line for line in out if " serve " in line]
    assert len(commands) == 4
    for index, command in enumerate(commands):
        assert command.startswith(
            f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 CUDA_VISIBLE_DEVICES={index} "
        )
        assert f"--port {9000 + index} " in command and "--tensor-parallel-size" not in command
        assert command.endswith(f"# log: vllm-{index}.log")
    urls = [f"http://127.0.0.1:{9000 + i}" for i in range(4)]
    assert f"policy: Qwen/Qwen2.5-7B-Instruct@{','.join(urls)}" in out
    listed = out[out.index("    base_urls:") + 1 :]
    assert listed == [f"      - {url}" for url in urls]


def test_tensor_parallel_servers_take_consecutive_gpus(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # the GPUs this shell may use
    out = dry_run(capsys, "--servers", "2", "--tensor-parallel-size", "2")
    commands = [line for line in out if " serve " in line]
    assert [c.split()[1] for c in commands] == [
        "CUDA_VISIBLE_DEVICES=4,5",
        "CUDA_VISIBLE_DEVICES=6,7",
    ]
    assert all("--tensor-parallel-size 2" in c for c in commands)


def test_in_docker_the_gpu_choice_is_passed_into_the_container(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = dry_run(capsys, "--servers", "2", "--gpus", "0,1", "--docker", "vllm/vllm-openai")
    commands = [line for line in out if "docker run" in line]
    assert len(commands) == 2
    for index, command in enumerate(commands):
        assert f"CUDA_VISIBLE_DEVICES={index} docker run" in command
        assert "-e CUDA_VISIBLE_DEVICES " in command.split(" vllm/vllm-openai ")[0]


def test_a_lone_server_keeps_the_gpus_it_inherits(capsys: pytest.CaptureFixture[str]) -> None:
    out = dry_run(capsys)
    assert len(out) == 1 + 6 and "CUDA_VISIBLE_DEVICES" not in out[0]
    assert out[1] == "policy: Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000"


def test_without_a_gpu_list_a_dry_run_assumes_and_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    out = dry_run(capsys, "--servers", "2")
    assert out[0].startswith("# no GPU list here") and "GPUs 0-1" in out[0]
    assert "CUDA_VISIBLE_DEVICES=1 " in out[2]
    with pytest.raises(LaunchError, match="pass --gpus 0,1"):
        plan_servers(VllmServeConfig(model="m"), 2, None, Path("vllm.log"))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--servers", "3", "--tensor-parallel-size", "2", "--gpus", "0,1,2,3"],
         "3 server(s) x tensor-parallel size 2 need 6 GPUs, but 4 are available (0,1,2,3)"),
        (["--servers", "4", "--gpus", "0,1,2,3", "--port", "65534"],
         "would need ports up to 65537"),
        (["--servers", "2", "--gpus", "0,,1"], "--gpus takes distinct device ids"),
        (["--servers", "2", "--gpus", "0,0"], "--gpus takes distinct device ids"),
    ],
)  # fmt: skip
def test_bad_plans_are_one_line_errors(
    flags: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main([*MODEL, *flags, "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_a_taken_port_in_the_range_stops_before_any_server_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    while not (_free(port + 1) and _free(port + 2)):  # the range's neighbours may be anyone's
        port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port + 1))
        argv = [*MODEL, "--servers", "3", "--gpus", "0,1,2", "--port", str(port)]
        argv += ["--vllm-bin", fake_vllm_bin(tmp_path), "--log", str(tmp_path / "vllm.log")]
        assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert f"ports {port}-{port + 2} on 127.0.0.1 must be free, but {port + 1} is in use" in err
    assert not list(tmp_path.glob("vllm-*.log"))  # nothing was started


def test_one_server_failing_stops_the_others(tmp_path: Path) -> None:
    port = free_port()
    while not _free(port + 1):  # the pair must be free (a neighbour may be anyone's)
        port = free_port()
    config = VllmServeConfig(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        port=port,
        vllm_bin=fake_vllm_bin(tmp_path, fail_on_port=port + 1),
    )
    plans = plan_servers(config, 2, ["0", "1"], tmp_path / "vllm.log")
    with pytest.raises(LaunchError, match="code 3") as info:
        launch_group(plans, health_timeout_s=60, poll_s=0.1)
    assert f"127.0.0.1:{port + 1}" in str(info.value) and "CUDA error" in str(info.value)
    with pytest.raises(httpx.ConnectError):  # the healthy one was stopped too
        httpx.get(f"http://127.0.0.1:{port}/health")


def test_two_servers_run_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    while any(not _free(p) for p in (port, port + 1)):
        port = free_port()
    command = [sys.executable, "-m", "rollout.vllm_cli", *MODEL, "--servers", "2"]
    command += ["--gpus", "0,1", "--port", str(port), "--vllm-bin", fake_vllm_bin(tmp_path)]
    command += ["--log", str(tmp_path / "vllm.log"), "--health-timeout", "60"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    urls = [f"http://127.0.0.1:{port + i}" for i in range(2)]
    try:
        assert cli.stdout is not None
        lines = [cli.stdout.readline() for _ in range(4)]
        why = f"exit code {cli.poll()}{log_tail(tmp_path / 'vllm-0.log')}"
        assert f"healthy at {urls[0]} (serving Qwen/Qwen2.5-7B-Instruct on GPU(s) 0)" in lines[1]
        assert f"healthy at {urls[1]}" in lines[2], f"{lines!r}; {why}"
        assert lines[3].strip() == f"policy: Qwen/Qwen2.5-7B-Instruct@{urls[0]},{urls[1]}"
        for url in urls:
            assert httpx.get(f"{url}/health").status_code == 200
        for index in range(2):
            assert f"gpus={index}" in (tmp_path / f"vllm-{index}.log").read_text()
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=30) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
    for url in urls:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
