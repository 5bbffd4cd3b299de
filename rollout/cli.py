"""`toolgym rollout`, `prior-check` and `vllm serve`: parse, compose, call one function."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envs.argtypes import (
    fraction,
    non_negative_float,
    non_negative_int,
    open_fraction,
    positive_float,
    positive_int,
)
from envs.data.rows import Row
from rollout.engine import GroupScorer, RolloutResult, RolloutSettings, run_rollouts
from rollout.errors import RolloutConfigError, RolloutError
from rollout.policy import DEFAULT_DEVICE, DEFAULT_REQUEST_TIMEOUT_S, SamplingParams
from rollout.policy_spec import LocalSpec, PolicySpec, ServerSpec, open_policy, parse_policy

if TYPE_CHECKING:  # these load every environment: imported when a verb runs, not at startup
    from rollout.environments import EnvPool
    from rollout.evaluate import EvalRequest
    from rollout.forgetting import ProbeRequest
    from rollout.prior_check import PriorCheckRun


# What this package raises on purpose: the composed CLI prints these as one line, exit 2.
ERRORS: tuple[type[BaseException], ...] = (RolloutError,)


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("policy")
    group.add_argument(
        "--policy",
        choices=["vllm", "local"],
        default="vllm",
        help="vllm: any OpenAI-compatible server (vLLM 0.33 for token ids); "
        "local: a transformers model in this process",
    )
    group.add_argument(
        "--base-url",
        action="append",
        default=None,
        help="policy server URL; repeat for several (least-outstanding-requests balancing)",
    )
    group.add_argument(
        "--model", required=True, help="served model or LoRA adapter name; with local: a path"
    )
    group.add_argument("--adapter", type=Path, help="local policy: a PEFT adapter to load")
    group.add_argument("--temperature", type=non_negative_float, default=1.0)
    group.add_argument("--top-p", type=open_fraction, default=1.0)
    group.add_argument("--max-tokens", type=positive_int, default=512, help="per turn")
    add_placement_arguments(group)


def add_placement_arguments(group: Any) -> None:
    """Where a policy runs: shared by rollout, prior-check and eval so they read alike."""
    group.add_argument(
        "--device", default=DEFAULT_DEVICE, help="local policy: torch device (cpu, cuda, cuda:1)"
    )
    group.add_argument(
        "--request-timeout",
        type=positive_float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help="served policy: seconds per call",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="toolgym/FilingsQA-v0", help="registered environment id")
    parser.add_argument("--dataset", type=Path, help="rows JSONL (else the environment's own)")
    parser.add_argument(
        "--tools-url",
        help="tool server URL (built-in envs send TOOL_BEARER, YAML envs their token_env)",
    )
    parser.add_argument("--transport", choices=["http", "mcp"], default=None)
    parser.add_argument("--concurrency", type=positive_int, default=64, help="episodes at once")
    parser.add_argument("--episode-timeout", type=positive_float, default=600.0, help="seconds")
    parser.add_argument(
        "--max-failures", type=non_negative_int, default=None, help="default: 10%% of runs"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    add_policy_arguments(parser)


def add_commands(sub: Any) -> None:
    rollout = sub.add_parser("rollout", help="play N episodes per row against a policy")
    add_run_arguments(rollout)
    rollout.add_argument("--group-size", type=positive_int, default=8, help="episodes per row")
    rollout.add_argument("--limit", type=positive_int, help="only the first K rows")
    rollout.add_argument("--out", type=Path, required=True, help="trajectories JSONL (resumes)")
    judge = rollout.add_argument_group("RULER (an LLM judge scoring each group)")
    judge.add_argument("--ruler-model", help="judge model name; enables RULER")
    judge.add_argument("--ruler-base-url", help="judge server (default: the first --base-url)")
    judge.add_argument("--ruler-weight", type=fraction, default=1.0, help="0 grader .. 1 judge")
    judge.add_argument("--ruler-cache", type=Path, help="JSONL cache of judge replies")
    judge.add_argument("--ruler-rubric", help="extra criteria appended to the judge's instructions")
    rollout.set_defaults(func=cmd_rollout)

    check = sub.add_parser(
        "prior-check", help="K rows x N attempts: does the policy sometimes succeed?"
    )
    add_run_arguments(check)
    check.add_argument("--rows", type=positive_int, default=32, help="rows sampled (K)")
    check.add_argument("--attempts", type=positive_int, default=8, help="attempts per row (N)")
    check.add_argument("--threshold", type=fraction, default=0.5, help="reward counted a success")
    check.add_argument(
        "--min-headroom",
        type=fraction,
        default=None,
        help="fail (exit 1) when pass@N - pass@1, about the most RL can win, is below this",
    )
    check.add_argument("--out", type=Path, help="keep the trajectories here")
    check.set_defaults(func=cmd_prior_check)

    add_eval_command(sub)

    from rollout.vllm_cli import add_vllm_commands

    add_vllm_commands(sub)

    from rollout.tasks_cli import add_tasks_commands

    add_tasks_commands(sub)


def policy_spec(args: argparse.Namespace) -> PolicySpec:
    """The spec `--policy/--model/--base-url/--adapter/--device/--request-timeout` describe."""
    if args.policy == "local":
        if args.base_url:
            raise RolloutConfigError("--base-url is for --policy vllm; local needs --model PATH")
        return LocalSpec(Path(args.model), args.adapter, args.device)
    if not args.base_url:
        raise RolloutConfigError(
            "--base-url is required with --policy vllm (e.g. http://127.0.0.1:8000/v1); "
            "start a server with `toolgym vllm serve --model ...`"
        )
    return ServerSpec(args.model, tuple(args.base_url), args.request_timeout)


def make_scorer(args: argparse.Namespace) -> GroupScorer | None:
    if not getattr(args, "ruler_model", None):
        return None
    from envs.graders.judge import JudgeConfig
    from rollout.ruler import RulerConfig, RulerScorer

    base_url = args.ruler_base_url or (args.base_url or [None])[0]
    if not base_url:
        raise RolloutConfigError("--ruler-model needs --ruler-base-url (the judge's server)")
    if not base_url.rstrip("/").endswith("/v1"):
        base_url = base_url.rstrip("/") + "/v1"
    config = RulerConfig(
        judge=JudgeConfig(base_url=base_url, model=args.ruler_model),
        weight=args.ruler_weight,
        cache_path=args.ruler_cache,
        rubric=args.ruler_rubric or None,
    )
    return RulerScorer(config)


def settings_from(args: argparse.Namespace, group_size: int) -> RolloutSettings:
    try:
        sampling = SamplingParams(
            temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens
        )
        return RolloutSettings(
            env_id=args.env,
            group_size=group_size,
            concurrency=args.concurrency,
            episode_timeout_s=args.episode_timeout,
            max_failures=args.max_failures,
            sampling=sampling,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        raise RolloutConfigError(f"bad setting: {exc}") from None


def env_pool(args: argparse.Namespace) -> EnvPool:
    from rollout.environments import EnvPool

    return EnvPool(
        args.env, dataset=args.dataset, tools_url=args.tools_url, transport=args.transport
    )


async def _rollout(
    args: argparse.Namespace, pick: Callable[[list[Row]], list[Row]]
) -> RolloutResult:
    settings = settings_from(args, args.group_size)
    pool = env_pool(args)
    try:
        policy = open_policy(policy_spec(args))
        try:
            return await run_rollouts(
                pick(pool.rows),
                pool.factory(),
                policy,
                settings,
                args.out,
                scorer=make_scorer(args),
            )
        finally:
            await policy.aclose()
    finally:
        await pool.aclose()


def cmd_rollout(args: argparse.Namespace) -> int:
    def pick(rows: list[Row]) -> list[Row]:
        return rows[: args.limit] if args.limit else rows

    summary = asyncio.run(_rollout(args, pick)).summary
    summary_path = args.out.with_suffix(".summary.json")
    summary_path.write_text(json.dumps(summary.model_dump(mode="json"), indent=2) + "\n")
    print(summary.table())
    print(f"trajectories: {args.out}\nsummary: {summary_path}")
    return 0


async def _prior_check(args: argparse.Namespace) -> PriorCheckRun:
    from rollout.prior_check import run_prior_check

    settings = settings_from(args, args.attempts)
    pool = env_pool(args)
    try:
        return await run_prior_check(
            pool,
            policy_spec(args),
            settings,
            rows=args.rows,
            threshold=args.threshold,
            min_headroom=args.min_headroom,
            out=args.out,
        )
    finally:
        await pool.aclose()


def cmd_prior_check(args: argparse.Namespace) -> int:
    run = asyncio.run(_prior_check(args))
    print(run.report())
    return 0 if run.result.learnable else 1


def add_eval_command(sub: Any) -> None:
    evaluate = sub.add_parser(
        "eval", help="base vs tuned on the same rows and seeds: per sample, by slice, report"
    )
    evaluate.add_argument("--env", default="toolgym/FilingsQA-v0")
    evaluate.add_argument("--split", default="val", help="rows from <data-dir>/<split>.jsonl")
    evaluate.add_argument("--data-dir", type=Path, default=Path("data"))
    evaluate.add_argument("--dataset", type=Path, help="rows JSONL (instead of --split)")
    evaluate.add_argument("--base", required=True, help="MODEL_DIR[+ADAPTER_DIR] or NAME@URL")
    evaluate.add_argument("--tuned", required=True, help="MODEL_DIR[+ADAPTER_DIR] or NAME@URL")
    evaluate.add_argument("--n", type=positive_int, help="K rows drawn with --seed (default: all)")
    evaluate.add_argument(
        "--attempts", type=positive_int, default=1, help="episodes per row and side"
    )
    evaluate.add_argument(
        "--tools-url",
        help="tool server URL (built-in envs send TOOL_BEARER, YAML envs their token_env)",
    )
    evaluate.add_argument("--transport", choices=["http", "mcp"], default=None)
    evaluate.add_argument("--out", type=Path, required=True, help="directory for all outputs")
    evaluate.add_argument("--rejudge", action="store_true", help="re-grade stored trajectories")
    add_placement_arguments(evaluate)
    evaluate.add_argument("--temperature", type=non_negative_float, default=0.0)
    evaluate.add_argument("--max-tokens", type=positive_int, default=512, help="per turn")
    evaluate.add_argument("--concurrency", type=positive_int, default=32)
    evaluate.add_argument("--episode-timeout", type=positive_float, default=600.0)
    evaluate.add_argument("--solved-threshold", type=fraction, default=0.5)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--no-progress", action="store_true")
    add_release_arguments(evaluate)
    evaluate.set_defaults(func=cmd_eval)


def add_release_arguments(evaluate: argparse.ArgumentParser) -> None:
    """The release gate and the forgetting probes (see README, "Release gate")."""
    group = evaluate.add_argument_group("release gate and forgetting")
    group.add_argument(
        "--gate", type=Path, help="gate.yaml: exit 1 when any of its rules fails (0 when all pass)"
    )
    group.add_argument(
        "--probe-env",
        help="environment both sides also play, to measure forgetting (default with "
        "--probe-dataset: the other built-in, e.g. toolgym/TatQA-v0 for FilingsQA)",
    )
    group.add_argument("--probe-dataset", type=Path, help="the probe environment's rows JSONL")
    group.add_argument(
        "--probe-rows", type=positive_int, default=50, help="probe rows drawn with --seed"
    )
    group.add_argument("--probe-tools-url", help="the probe's tool server (default: --tools-url)")
    group.add_argument(
        "--no-kl", action="store_true", help="skip KL(tuned || base) (local policies load again)"
    )
    group.add_argument(
        "--kl-sequences", type=positive_int, help="score at most this many tuned sequences"
    )


def eval_request(args: argparse.Namespace) -> EvalRequest:
    """The eval `args` describe. Both policies are read here, first: a typo in --tuned must
    wait neither for the rows nor for base's run (--rejudge plays no policy, so its models
    need not exist any more)."""
    from rollout.evaluate import EvalRequest
    from rollout.gate import load_gate

    gate = load_gate(args.gate) if args.gate is not None else None

    def spec(text: str) -> PolicySpec:
        return parse_policy(text, device=args.device, request_timeout_s=args.request_timeout)

    return EvalRequest(
        env_id=args.env,
        dataset=args.dataset or args.data_dir / f"{args.split}.jsonl",
        out=args.out,
        base=None if args.rejudge else spec(args.base),
        tuned=None if args.rejudge else spec(args.tuned),
        tools_url=args.tools_url,
        transport=args.transport,
        n=args.n,
        attempts=args.attempts,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
        episode_timeout_s=args.episode_timeout,
        solved_threshold=args.solved_threshold,
        seed=args.seed,
        progress=not args.no_progress,
        rejudge=args.rejudge,
        gate=gate,
        probe=probe_request(args),
        kl=not args.no_kl,
        kl_sequences=args.kl_sequences,
    )


def probe_request(args: argparse.Namespace) -> ProbeRequest | None:
    """The probe set `--probe-*` describe; None when neither an environment nor rows are given."""
    from rollout.forgetting import ProbeRequest, default_probe_env

    if args.probe_env is None and args.probe_dataset is None:
        return None
    env_id = args.probe_env or default_probe_env(args.env)
    if env_id is None:
        raise RolloutConfigError(
            f"--probe-dataset: {args.env} has no default probe environment; name one with "
            "--probe-env ID (see `toolgym envs list`)"
        )
    return ProbeRequest(
        env_id=env_id,
        dataset=args.probe_dataset,
        rows=args.probe_rows,
        tools_url=args.probe_tools_url or args.tools_url,
        transport=args.transport,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """0, or 1 when a --gate rule failed (errors exit 2 through the composed CLI)."""
    from rollout.evaluate import run_eval

    outcome = asyncio.run(run_eval(eval_request(args)))
    print(outcome.terminal())
    return outcome.exit_code
