"""Rollout engine throughput against policy servers with a fixed delay per call.

    .venv/bin/python benchmarks/bench_rollout.py [--delay 1.0] [--concurrency 16 64 256 512]
    .venv/bin/python benchmarks/bench_rollout.py --scale [--delay 4]   # 4 fakes, 2 tool servers

Fake OpenAI-compatible servers (rollout.fake_vllm, the `agent` script: search, read, answer)
answer every chat completion after exactly `--delay` seconds; real `toolgym serve` processes
(lexical index) answer the tool calls. The default run has one of each; `--scale` runs 1,024
concurrent episodes against 4 fakes and 2 tool-server replicas (the policy balances over the
fakes, the environments over the replicas). Each level runs `--rounds` episodes per worker.
The ideal is what the delays alone allow: C episodes at once, each taking (model calls x
delay), i.e. C / (turns x delay) episodes per second. The target is at least 90% of that at
256 concurrent episodes against one fake. Also reported: the engine's own CPU time per model
call (this process: engine, environments, tool client and policy client together), the CPU
of the fakes and of the tool servers, how busy the whole machine was, and how much of it
other tenants used. `--client httpx` plays the same levels with the policy's and the tool
clients' requests on httpx instead of aiohttp, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_WORKDIR,
    PYTHON,
    CpuWindow,
    ServerProcess,
    free_port,
    log,
    machine_line,
    new_token,
    prepare_corpus,
    prepare_lexical_index,
    quiet,
    table,
    toolgym_serve,
    verdict,
)

TARGET = 0.90
TARGET_CONCURRENCY = 256
SCALE_CONCURRENCY = 1024
SCALE_FAKES, SCALE_TOOLS = 4, 2


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def dataset_rows(workdir: Path, corpus: Path) -> list:
    from envs.data.build import build_dataset
    from envs.data.rows import load_rows

    data = workdir / "data"
    if not (data / "train.jsonl").is_file():
        with quiet():
            build_dataset(corpus, data, seed=0)
    return list(load_rows(data / "train.jsonl"))


@dataclass
class Fleet:
    """The servers of one set-up, started and ready."""

    label: str
    fakes: list[ServerProcess]
    tools: list[ServerProcess]
    token: str

    @property
    def policy_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{s.port}" for s in self.fakes]

    @property
    def tools_url(self) -> str:
        """Every replica, comma-separated: the environments balance over them (envs.replicas)."""
        return ",".join(f"http://127.0.0.1:{s.port}" for s in self.tools)


@contextmanager
def fleet(args: argparse.Namespace, fakes: int, tools: int) -> Iterator[Fleet]:
    corpus = prepare_corpus(args.workdir)
    index = prepare_lexical_index(corpus, args.workdir / "index-lexical")
    token = new_token()
    with ExitStack() as stack:
        started = []
        for n in range(fakes):
            port = free_port()
            command = [
                PYTHON, "-m", "rollout.fake_vllm", "--port", str(port),
                "--delay", str(args.delay), "--script", "agent",
            ]  # fmt: skip
            started.append(ServerProcess(command, port, token, f"fake vLLM {n}"))
        for n in range(tools):
            port = free_port()
            started.append(
                ServerProcess(toolgym_serve(corpus, index, port), port, token, f"tools {n}")
            )
        for server in started:  # all start at once, then each is waited for
            stack.callback(server.__exit__, None, None, None)
            server.start()
        for server in started:
            server.wait_ready()
        label = f"{fakes} fake{'s' * (fakes > 1)}, {tools} tool server{'s' * (tools > 1)}"
        yield Fleet(label, started[:fakes], started[fakes:], token)


async def one_level(
    rows: list, concurrency: int, rounds: int, servers: Fleet, client: str
) -> dict[str, float]:
    from envs.client import HttpToolClient
    from rollout.engine import RolloutSettings, run_rollouts
    from rollout.environments import EnvPool
    from rollout.fake_vllm import DEFAULT_MODEL
    from rollout.openai_policy import OpenAIPolicy

    HttpToolClient.default_http_client = "httpx" if client == "httpx" else "aiohttp"
    group_size = 8
    episodes = concurrency * rounds
    chosen = rows[: episodes // group_size]
    if len(chosen) * group_size < episodes:
        raise SystemExit(f"not enough rows for {episodes} episodes: lower --rounds")
    pool = EnvPool(
        "toolgym/FilingsQA-v0", dataset=rows, tools_url=servers.tools_url, token=servers.token
    )
    policy = OpenAIPolicy(
        servers.policy_urls,
        DEFAULT_MODEL,
        timeout_s=120,
        max_connections=concurrency,
        http_client="httpx" if client == "httpx" else "aiohttp",
    )
    settings = RolloutSettings(
        group_size=group_size, concurrency=concurrency, progress=False, max_failures=0
    )
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "t.jsonl"
        cpu0, wall0 = own_cpu_seconds(), time.perf_counter()
        result = await run_rollouts(chosen, pool.factory(), policy, settings, out)
        wall, cpu = time.perf_counter() - wall0, own_cpu_seconds() - cpu0
    summary, trajectories = result.summary, result.trajectories
    await policy.aclose()
    await pool.aclose()
    calls = sum(len(t.turns) for t in trajectories)
    return {
        "episodes": float(summary.episodes),
        "failed": float(summary.failed),
        "wall_s": wall,
        "turns": calls / len(trajectories),
        "calls": float(calls),
        "cpu_s": cpu,
        "policy_p50_s": statistics.median(t.latency_s for x in trajectories for t in x.turns),
        "episode_s": statistics.fmean(t.metrics.episode_s for t in trajectories),
        "policy_s": statistics.fmean(t.metrics.policy_s for t in trajectories),
        "tool_s": statistics.fmean(t.metrics.tool_s for t in trajectories),
    }


def measure(args: argparse.Namespace, rows: list, servers: Fleet, concurrency: int) -> dict:
    log(f"{servers.label}, concurrency {concurrency}: {concurrency * args.rounds} episodes ...")
    fakes = CpuWindow([s.pid for s in servers.fakes])
    tools = CpuWindow([s.pid for s in servers.tools])
    fakes.start()
    tools.start()
    level = one_level(rows, concurrency, args.rounds, servers, args.client)
    if args.profile:
        result = profiled(level, f"{args.profile_out}.{concurrency}" if args.profile_out else None)
    else:
        result = asyncio.run(level)
    fakes.stop()
    tools.stop()
    result["fakes_cpu_s"], result["tools_cpu_s"] = fakes.server_s, tools.server_s
    result["machine_busy"] = fakes.machine_busy_s / max(fakes.machine_total_s, 1e-9)
    others = fakes.machine_busy_s - fakes.server_s - tools.server_s - result["cpu_s"]
    result["other_cores"] = max(0.0, others) / max(fakes.wall_s, 1e-9)
    result["load"] = os.getloadavg()[0]
    log(
        f"  episode {result['episode_s']:.2f}s = policy {result['policy_s']:.2f}s + "
        f"tools {result['tool_s']:.3f}s + engine/env "
        f"{result['episode_s'] - result['policy_s'] - result['tool_s']:.3f}s"
    )
    return result


def profiled(level: Any, save_to: str | None) -> dict[str, float]:
    import cProfile
    import pstats

    # CPU time, not wall time: on a shared machine wall time charges preemption to whatever
    # function happened to be running. (cProfile roughly doubles the CPU per call; py-spy
    # `record -f raw` on this script gives shares with far less distortion.)
    with cProfile.Profile(time.process_time) as profiler:
        result: dict[str, float] = asyncio.run(level)
    if save_to:
        profiler.dump_stats(save_to)
    stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime")
    stats.print_stats(25)
    return result


def report(delay: float, results: list[tuple[str, int, dict]]) -> float | None:
    rows_out, share_at_target = [], None
    for label, concurrency, r in results:
        ideal = concurrency / (r["turns"] * delay)  # episodes/s the delays allow
        measured = r["episodes"] / r["wall_s"]
        share = measured / ideal
        if concurrency == TARGET_CONCURRENCY and label.startswith("1 fake,"):
            share_at_target = share
        rows_out.append(
            [
                label, concurrency, int(r["episodes"]), int(r["failed"]), round(r["turns"], 2),
                ideal, measured, f"{share:.0%}", f"{1000 * r['cpu_s'] / r['calls']:.2f}",
                f"{1000 * r['policy_p50_s']:.0f}", f"{r['fakes_cpu_s']:.1f}",
                f"{r['tools_cpu_s']:.1f}", f"{r['machine_busy']:.0%}",
                f"{r['other_cores']:.2f}", f"{r['load']:.1f}",
            ]
        )  # fmt: skip
    headers = [
        "set-up", "concurrency", "episodes", "failed", "calls/ep", "ideal ep/s",
        "measured ep/s", "of ideal", "engine CPU ms/call", "call p50 ms", "fakes CPU s",
        "tools CPU s", "machine busy", "other tenants (cores)", "load avg",
    ]  # fmt: skip
    print(table(headers, rows_out))
    return share_at_target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=1.0, help="seconds per model call")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[16, 64, 256, 512])
    parser.add_argument("--rounds", type=int, default=4, help="episodes per worker")
    parser.add_argument(
        "--scale",
        action="store_true",
        help=f"also {SCALE_CONCURRENCY} episodes, {SCALE_FAKES} fakes, {SCALE_TOOLS} tool servers",
    )
    parser.add_argument(
        "--client",
        choices=["aiohttp", "httpx"],
        default="aiohttp",
        help="the HTTP client of the policy and of the tool clients",
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--profile", action="store_true", help="cProfile the engine's process")
    parser.add_argument("--profile-out", help="save the cProfile stats to PATH.<concurrency>")
    args = parser.parse_args()
    log(machine_line())
    import rollout.engine
    import rollout.environments
    import rollout.fake_vllm
    import rollout.openai_policy  # noqa: F401  (imported before any timing)

    rows = dataset_rows(args.workdir, prepare_corpus(args.workdir))
    results: list[tuple[str, int, dict]] = []
    if args.concurrency:
        with fleet(args, 1, 1) as servers:
            for concurrency in args.concurrency:
                results.append(
                    (servers.label, concurrency, measure(args, rows, servers, concurrency))
                )
    if args.scale:
        with fleet(args, SCALE_FAKES, SCALE_TOOLS) as servers:
            level = measure(args, rows, servers, SCALE_CONCURRENCY)
            results.append((servers.label, SCALE_CONCURRENCY, level))
    print(
        f"rollout engine ({args.client} policy and tool clients), fake policy servers with "
        f"{args.delay:g}s per call, real tool servers"
    )
    share_at_target = report(args.delay, results)
    if share_at_target is not None:
        print(
            f"target: >= {TARGET:.0%} of ideal at {TARGET_CONCURRENCY} concurrent episodes "
            f"against one fake: {share_at_target:.0%} {verdict(share_at_target >= TARGET)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
