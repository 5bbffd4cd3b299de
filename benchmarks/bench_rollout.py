"""Rollout engine throughput against a policy server with a fixed delay per call.

    .venv/bin/python benchmarks/bench_rollout.py [--delay 1.0] [--concurrency 16 64 256 512]

A fake OpenAI-compatible server (rollout.fake_vllm, the `agent` script: search, read, answer)
answers every chat completion after exactly `--delay` seconds; a real `toolgym serve` process
(lexical index) answers the tool calls. Each concurrency level runs `--rounds` episodes per
worker. The ideal is what the delays alone allow: C episodes at once, each taking
(model calls x delay), i.e. C / (turns x delay) episodes per second. The target is at least
90% of that at 256 concurrent episodes. Also reported: the engine's own CPU time per model
call (this process: engine, environments, tool client and policy client together), and the
CPU used by the two servers.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


async def one_level(
    rows: list, concurrency: int, rounds: int, tools_url: str, token: str, policy_url: str
) -> dict[str, float]:
    from rollout.engine import RolloutSettings, run_rollouts
    from rollout.environments import EnvPool
    from rollout.fake_vllm import DEFAULT_MODEL
    from rollout.openai_policy import OpenAIPolicy

    group_size = 8
    episodes = concurrency * rounds
    chosen = rows[: episodes // group_size]
    if len(chosen) * group_size < episodes:
        raise SystemExit(f"not enough rows for {episodes} episodes: lower --rounds")
    pool = EnvPool("toolgym/FilingsQA-v0", dataset=rows, tools_url=tools_url, token=token)
    policy = OpenAIPolicy(policy_url, DEFAULT_MODEL, timeout_s=120, max_connections=concurrency)
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
    turns_mean = calls / len(trajectories)
    return {
        "episodes": float(summary.episodes),
        "failed": float(summary.failed),
        "wall_s": wall,
        "turns": turns_mean,
        "calls": float(calls),
        "cpu_s": cpu,
        "policy_p50_s": statistics.median(t.latency_s for x in trajectories for t in x.turns),
        "episode_s": statistics.fmean(t.metrics.episode_s for t in trajectories),
        "policy_s": statistics.fmean(t.metrics.policy_s for t in trajectories),
        "tool_s": statistics.fmean(t.metrics.tool_s for t in trajectories),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=1.0, help="seconds per model call")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256, 512])
    parser.add_argument("--rounds", type=int, default=4, help="episodes per worker")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--profile", action="store_true", help="cProfile the engine's process")
    args = parser.parse_args()
    log(machine_line())
    import rollout.engine
    import rollout.environments
    import rollout.fake_vllm
    import rollout.openai_policy  # noqa: F401  (imported before any timing)

    corpus = prepare_corpus(args.workdir)
    index = prepare_lexical_index(corpus, args.workdir / "index-lexical")
    rows = dataset_rows(args.workdir, corpus)
    token = new_token()
    tools_port, policy_port = free_port(), free_port()
    fake = [
        PYTHON, "-m", "rollout.fake_vllm", "--port", str(policy_port),
        "--delay", str(args.delay), "--script", "agent",
    ]  # fmt: skip
    results = []
    with (
        ServerProcess(
            toolgym_serve(corpus, index, tools_port), tools_port, token, "tools"
        ) as tools,
        ServerProcess(fake, policy_port, token, "fake vLLM") as policy_server,
    ):
        for concurrency in args.concurrency:
            log(f"concurrency {concurrency}: {concurrency * args.rounds} episodes ...")
            window = CpuWindow([tools.pid, policy_server.pid])
            window.start()
            level = one_level(
                rows,
                concurrency,
                args.rounds,
                f"http://127.0.0.1:{tools_port}",
                token,
                f"http://127.0.0.1:{policy_port}",
            )
            if args.profile:
                import cProfile
                import pstats

                with cProfile.Profile() as profiler:
                    result = asyncio.run(level)
                stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime")
                stats.print_stats(25)
            else:
                result = asyncio.run(level)
            window.stop()
            result["servers_cpu_s"] = window.server_s
            result["machine_busy"] = window.machine_busy_s / max(window.machine_total_s, 1e-9)
            results.append((concurrency, result))
            log(
                f"  episode {result['episode_s']:.2f}s = policy {result['policy_s']:.2f}s + "
                f"tools {result['tool_s']:.3f}s + engine/env "
                f"{result['episode_s'] - result['policy_s'] - result['tool_s']:.3f}s"
            )
    rows_out = []
    share_at_target = None
    for concurrency, r in results:
        ideal = concurrency / (r["turns"] * args.delay)  # episodes/s the delays allow
        measured = r["episodes"] / r["wall_s"]
        share = measured / ideal
        if concurrency == TARGET_CONCURRENCY:
            share_at_target = share
        rows_out.append(
            [
                concurrency,
                int(r["episodes"]),
                int(r["failed"]),
                round(r["turns"], 2),
                ideal,
                measured,
                f"{share:.0%}",
                f"{1000 * r['cpu_s'] / r['calls']:.2f}",
                f"{1000 * r['policy_p50_s']:.0f}",
                f"{r['servers_cpu_s']:.1f}",
                f"{r['machine_busy']:.0%}",
            ]
        )
    print(f"rollout engine, fake policy server with {args.delay:g}s per call, real tool server")
    print(
        table(
            [
                "concurrency",
                "episodes",
                "failed",
                "calls/ep",
                "ideal ep/s",
                "measured ep/s",
                "of ideal",
                "engine CPU ms/call",
                "call p50 ms",
                "servers CPU s",
                "machine busy",
            ],
            rows_out,
        )
    )
    if share_at_target is not None:
        print(
            f"target: >= {TARGET:.0%} of ideal at {TARGET_CONCURRENCY} concurrent episodes: "
            f"{share_at_target:.0%} {verdict(share_at_target >= TARGET)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
