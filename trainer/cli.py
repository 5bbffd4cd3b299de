"""The `toolgym` command. Each package contributes its verbs; this module only wires them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from envs import cli as envs_cli
from rollout import cli as rollout_cli
from toolservers import cli as toolservers_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolgym", description="Train tool-using LLM agents with GRPO."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<verb>")
    demo = toolservers_cli.add_commands(sub)
    add_demo_run(demo)
    envs_cli.add_commands(sub)
    rollout_cli.add_commands(sub)
    train = sub.add_parser("train", help="GRPO on LoRA against a registered environment")
    train.add_argument("--config", type=Path, required=True, help="run YAML (see configs/)")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no live table")
    train.set_defaults(func=cmd_train)
    return parser


def add_demo_run(demo: argparse._SubParsersAction) -> None:
    run = demo.add_parser("run", help="the whole loop offline on a CPU: what `make demo` runs")
    run.add_argument("--workdir", type=Path, default=Path(".demo"))
    run.add_argument("--http-port", type=int, default=0, help="default: a free port")
    run.add_argument("--mcp-port", type=int, default=0, help="default: a free port")
    run.add_argument("--sft-turn-steps", type=int, default=None, help="SFT stage 1 steps")
    run.add_argument("--sft-steps", type=int, default=None, help="SFT stage 2 steps")
    run.add_argument(
        "--grpo-set", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of configs/demo-cpu.yaml (e.g. steps=10)",
    )  # fmt: skip
    run.add_argument(
        "--reuse-policy", action="store_true",
        help="keep the warm-started policy of an earlier run in --workdir (GRPO onwards only)",
    )  # fmt: skip
    run.add_argument(
        "--no-signal-gate", action="store_true",
        help="go on to GRPO even when the prior check finds few rows to learn from",
    )  # fmt: skip
    run.add_argument("--seed", type=int, default=0)
    run.set_defaults(func=cmd_demo_run)


def cmd_demo_run(args: argparse.Namespace) -> int:
    import dataclasses

    from trainer.demo import DemoSettings, run_demo

    settings = DemoSettings(
        workdir=args.workdir,
        http_port=args.http_port,
        mcp_port=args.mcp_port,
        grpo_overrides=args.grpo_set,
        reuse_policy=args.reuse_policy,
        require_signal=not args.no_signal_gate,
        seed=args.seed,
    )
    if args.sft_steps is not None:
        settings.warm = dataclasses.replace(settings.warm, max_steps=args.sft_steps)
    if args.sft_turn_steps is not None:
        settings.warm = dataclasses.replace(settings.warm, turn_steps=args.sft_turn_steps)
    run_demo(settings)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import asyncio

    from trainer.config import load_config
    from trainer.train import train

    config = load_config(args.config, args.set)
    result = asyncio.run(train(config, resume=args.resume, echo=not args.quiet))
    print(f"adapter {result.version}: {result.output_dir / 'adapters' / result.version}")
    print(f"metrics: {result.metrics}\ncurves: {result.curves}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one verb; known failures print one line (no traceback) and exit 2."""
    from envs.errors import EnvError
    from rollout.errors import RolloutError
    from toolservers.errors import ToolServerError
    from toolservers.serve import StartupRefusedError
    from trainer.errors import TrainerError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (
        ToolServerError,
        EnvError,
        RolloutError,
        TrainerError,
        StartupRefusedError,
        OSError,  # a path that is missing, unwritable, or a port in use
    ) as exc:
        print(f"toolgym: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
