"""Several vLLM servers on one machine: one per GPU, or one per group of tensor-parallel GPUs.

Rollouts are balanced over any number of servers (rollout.openai_policy), and a machine with
eight GPUs serves a small model fastest as eight servers rather than one. `plan_servers` turns
one server's settings into N, server i on GPUs [i*T, (i+1)*T) of those available and on port
`port + i`, each with its own log; `launch_group` starts them all at once (a model load takes
minutes, so they load side by side), waits until every one is healthy, and stops them all if
any fails or on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rollout.errors import LaunchError
from rollout.vllm import (
    GPUS_ENV,
    VllmProcess,
    VllmServeConfig,
    port_taken,
    start,
    wait_healthy,
)


@dataclass(frozen=True)
class ServerPlan:
    config: VllmServeConfig  # its port and GPUs set
    log_path: Path

    @property
    def url(self) -> str:
        return self.config.url


def parse_gpus(text: str) -> list[str]:
    """`0,1,2,3` (indices or GPU UUIDs, as CUDA_VISIBLE_DEVICES takes them)."""
    gpus = [part.strip() for part in text.split(",")]
    if not all(gpus) or len(set(gpus)) != len(gpus):
        raise LaunchError(f"--gpus takes distinct device ids separated by commas, not {text!r}")
    return gpus


def available_gpus(env: dict[str, str] | None = None) -> list[str] | None:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi
    lists; None when neither says (no driver here, e.g. preparing a dry run on a laptop)."""
    env = dict(os.environ if env is None else env)
    if (visible := env.get(GPUS_ENV, "").strip()) != "":
        return parse_gpus(visible)
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in listed.splitlines() if line.strip()]


def log_for(log_path: Path, index: int, count: int) -> Path:
    """vllm.log for a lone server; vllm-0.log, vllm-1.log, ... for several."""
    if count == 1:
        return log_path
    return log_path.with_name(f"{log_path.stem}-{index}{log_path.suffix}")


def plan_servers(
    config: VllmServeConfig, servers: int, gpus: Sequence[str] | None, log_path: Path
) -> list[ServerPlan]:
    """`servers` copies of `config` on consecutive ports, each on its own
    `config.tensor_parallel_size` GPUs. One server on one GPU with no GPU list keeps the GPUs
    it inherits (CUDA_VISIBLE_DEVICES untouched), as a single `vllm serve` would."""
    width = config.tensor_parallel_size
    needed = servers * width
    if servers < 1:
        raise LaunchError(f"--servers must be at least 1, not {servers}")
    last_port = config.port + servers - 1
    if last_port > 65535:
        raise LaunchError(
            f"{servers} servers from port {config.port} would need ports up to {last_port} "
            "(above 65535): pick a lower --port"
        )
    if needed == 1 and gpus is None:
        return [ServerPlan(config, log_path)]
    if gpus is None:
        raise LaunchError(
            f"cannot tell which GPUs this machine has (CUDA_VISIBLE_DEVICES is unset and "
            f"nvidia-smi did not answer); {servers} server(s) x {width} GPU(s) need {needed}: "
            "pass --gpus 0,1,..."
        )
    if len(gpus) < needed:
        raise LaunchError(
            f"{servers} server(s) x tensor-parallel size {width} need {needed} GPUs, but "
            f"{len(gpus)} are available ({','.join(gpus)}): lower --servers or "
            "--tensor-parallel-size, or pass --gpus"
        )
    return [
        ServerPlan(
            config.model_copy(
                update={"port": config.port + i, "gpus": list(gpus[i * width : (i + 1) * width])}
            ),
            log_for(log_path, i, servers),
        )
        for i in range(servers)
    ]


def check_ports_free(plans: Sequence[ServerPlan]) -> None:
    """Every port before any server starts: a clash found later would cost a model load."""
    taken = [plan.config.port for plan in plans if port_taken(plan.config.host, plan.config.port)]
    if taken:
        first, last = plans[0].config.port, plans[-1].config.port
        span = f"ports {first}-{last}" if last != first else f"port {first}"
        raise LaunchError(
            f"{span} on {plans[0].config.host} must be free, but "
            f"{', '.join(map(str, taken))} {'is' if len(taken) == 1 else 'are'} in use: "
            "pick another --port"
        )


def launch_group(
    plans: Sequence[ServerPlan], health_timeout_s: float = 900.0, poll_s: float = 0.5
) -> list[VllmProcess]:
    """Start every server, then wait until all are healthy (one deadline for all). On any
    failure, or Ctrl-C, every server started so far is stopped before the error goes up."""
    check_ports_free(plans)
    servers: list[VllmProcess] = []
    try:
        for plan in plans:
            servers.append(start(plan.config, plan.log_path))
        deadline = time.monotonic() + health_timeout_s
        for server in servers:
            wait_healthy(server, max(deadline - time.monotonic(), poll_s), poll_s)
    except BaseException:
        stop_all(servers, timeout_s=10)
        raise
    return servers


def stop_all(servers: Sequence[VllmProcess], timeout_s: float = 30.0) -> None:
    """SIGTERM every server at once, then SIGKILL what is left after `timeout_s` in all."""
    for server in servers:
        server.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for server in servers:
        try:
            server.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            server.signal(signal.SIGKILL)
            server.process.wait()


def url_lines(name: str, urls: Sequence[str]) -> list[str]:
    """How to point rollouts at the servers: the NAME@URL,URL spelling of --policy/--base and
    the base_urls list of a train config (YAML, ready to paste)."""
    return [
        f"policy: {name}@{','.join(urls)}",
        "train config:",
        "  policy:",
        "    backend: vllm",
        "    base_urls:",
        *(f"      - {url}" for url in urls),
    ]
