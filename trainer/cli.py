"""The `toolgym` command. Each package contributes its verbs; this module only wires them."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from envs import cli as envs_cli
from envs.argtypes import port_or_free, positive_int
from rollout import cli as rollout_cli
from toolservers import cli as toolservers_cli

# A word that starts like a negative figure: -12.6%, -1,234, -$5, -.5, -1e-3.
NEGATIVE_VALUE = re.compile(r"-(?:[$€£¥]\s?)?\.?\d")


class ToolgymParser(argparse.ArgumentParser):
    """argparse with two changes, inherited by every verb's parser (subparsers are made with
    the parent's class): option values may be negative figures, and a usage error is one
    line, like every other error of the CLI."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse reads any word starting with "-" as an option unless it is a plain number
        # ("-12.6"), so `--reference -12.6%` failed with "expected one argument". No toolgym
        # option starts with "-" and a digit, so such a word is always a value. This is the
        # attribute argparse decides it with; Python 3.13 widened it the same way.
        self._negative_number_matcher = NEGATIVE_VALUE

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ToolgymParser(prog="toolgym", description="Train tool-using LLM agents with GRPO.")
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
    run.add_argument("--http-port", type=port_or_free, default=0, help="default: a free port")
    run.add_argument("--mcp-port", type=port_or_free, default=0, help="default: a free port")
    run.add_argument("--sft-turn-steps", type=positive_int, default=None, help="SFT stage 1 steps")
    run.add_argument("--sft-steps", type=positive_int, default=None, help="SFT stage 2 steps")
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

    from trainer.config import load_config
    from trainer.demo import CONFIG, DemoSettings, run_demo

    # The overrides are used at the GRPO stage, minutes in: check them against the demo's
    # config now, so `--grpo-set stpes=10` fails before the corpus is built.
    load_config(CONFIG, args.grpo_set)
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
    from envs.graders import GraderError
    from rollout.errors import RolloutError
    from toolservers.errors import ToolServerError
    from toolservers.serve import StartupRefusedError
    from trainer.errors import TrainerError

    known = (
        ToolServerError,
        EnvError,
        GraderError,  # `grade`'s failures; grader specs given outside an environment
        RolloutError,
        TrainerError,
        StartupRefusedError,
        OSError,  # a path that is missing, unwritable, or a port in use
    )
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        failure = known_failure(exc, known)
        if failure is None:
            raise  # a bug: the traceback is what is needed
        print(f"toolgym: error: {one_line(str(failure))}", file=sys.stderr)
        return 2


def known_failure(
    exc: BaseException, known: tuple[type[BaseException], ...]
) -> BaseException | None:
    """`exc` when it is a known failure, else None. Concurrent workers (the rollout engine's
    task group) fail together in an exception group: when every failure in it is known, the
    first one stands for all (they are typically the same dead server or missing setting)."""
    if isinstance(exc, known):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = _leaves(exc)
        if leaves and all(isinstance(leaf, known) for leaf in leaves):
            return leaves[0]
    return None


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def one_line(message: str) -> str:
    """An error message on one line: "N problems in dataset:" and its indented list become
    "N problems in dataset: a; b", so a terminal or a log shows every error as one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    return f"{lines[0].rstrip(':')}: {'; '.join(lines[1:])}"


if __name__ == "__main__":
    sys.exit(main())
