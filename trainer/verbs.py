"""The trainer's verbs, `train` and `demo run`: parse, call one function, report.

trainer/cli.py adds them to `toolgym` next to every other package's verbs. The demo's code
(trainer/demo.py) is imported only when `demo run` runs, and never imports the CLI back.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

from envs.argtypes import fraction, port_or_free, positive_int
from trainer.errors import ConfigError, TrainerError

# What these verbs fail with on purpose; `toolgym` knows the union of every package's ERRORS.
ERRORS: tuple[type[BaseException], ...] = (
    TrainerError,
    OSError,  # a path that is missing or unwritable
)


def add_commands(sub: argparse._SubParsersAction, demo: argparse._SubParsersAction) -> None:
    """`train` into the verbs, `run` into the `demo` group (toolservers' `add_commands`)."""
    train = sub.add_parser("train", help="GRPO on LoRA against a registered environment")
    train.add_argument("--config", type=Path, required=True, help="run YAML (see configs/)")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no live table")
    train.add_argument(
        "--nproc-per-node", type=positive_int, default=None, metavar="N",
        help="data-parallel over N processes on this machine (torch's launcher; one per GPU)",
    )  # fmt: skip
    train.set_defaults(func=cmd_train)

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
        help="go on to GRPO even when the check before it finds too little to learn",
    )  # fmt: skip
    run.add_argument(
        "--no-scale-slips", action="store_true",
        help="demonstrate rows right only (default: rows in millions also with the scale slipped)",
    )  # fmt: skip
    run.add_argument(
        "--min-headroom", type=fraction, default=None,
        help="stop before GRPO when val pass@k - pass@1 is below this (default: report only)",
    )  # fmt: skip
    run.add_argument("--seed", type=int, default=0)
    run.set_defaults(func=cmd_demo_run)


def cmd_train(args: argparse.Namespace) -> int:
    """One process, or one rank of a launcher's run (WORLD_SIZE set: torchrun, accelerate
    launch, srun), or with --nproc-per-node N the launcher of N such ranks."""
    from trainer import distributed
    from trainer.config import load_config
    from trainer.train import train

    config = load_config(args.config, args.set)
    if args.nproc_per_node is not None and args.nproc_per_node > 1:
        return launch_train(args, config)
    ctx = distributed.init_from_env(config.policy.device, config.distributed_timeout_s)
    try:
        result = asyncio.run(train(config, resume=args.resume, echo=not args.quiet, dist=ctx))
    finally:
        distributed.close(ctx)
    if ctx.is_main:
        print(f"adapter {result.version}: {result.adapter}")
        print(f"metrics: {result.metrics}\ncurves: {result.curves}")
    return 0


def launch_train(args: argparse.Namespace, config: Any) -> int:
    """Start `args.nproc_per_node` ranks of this same command through torch's launcher, after
    refusing here, once, what every rank would refuse."""
    from trainer.distributed import env_context, launch
    from trainer.loop import resume_point

    nproc = args.nproc_per_node
    if env_context(os.environ) is not None:
        raise ConfigError(
            "--nproc-per-node: this process was started by a launcher (WORLD_SIZE is set); "
            "leave the flag out and let the launcher start the ranks"
        )
    if config.policy.device.startswith("cuda"):
        import torch

        if torch.cuda.device_count() < nproc:
            raise ConfigError(
                f"--nproc-per-node {nproc}: this machine has {torch.cuda.device_count()} "
                "GPU(s), and each rank takes one (policy.device is cuda)"
            )
    resume_point(config, args.resume, nproc)
    argv = ["train", "--config", str(args.config)]
    argv += [part for item in args.set for part in ("--set", item)]
    argv += ["--resume"] * args.resume + ["--quiet"] * args.quiet
    launch(nproc, argv)
    return 0


def cmd_demo_run(args: argparse.Namespace) -> int:
    from trainer import demo
    from trainer.config import load_config

    # The overrides are used at the GRPO stage, minutes in: check them against the demo's
    # config now, so `--grpo-set stpes=10` fails before the corpus is built.
    load_config(demo.CONFIG, args.grpo_set)
    settings = demo.DemoSettings(
        workdir=args.workdir,
        http_port=args.http_port,
        mcp_port=args.mcp_port,
        grpo_overrides=args.grpo_set,
        reuse_policy=args.reuse_policy,
        require_signal=not args.no_signal_gate,
        seed=args.seed,
    )
    settings.scale_slips = not args.no_scale_slips
    if args.min_headroom is not None:
        settings.min_headroom = args.min_headroom
    if args.sft_steps is not None:
        settings.warm = dataclasses.replace(settings.warm, max_steps=args.sft_steps)
    if args.sft_turn_steps is not None:
        settings.warm = dataclasses.replace(settings.warm, turn_steps=args.sft_turn_steps)
    demo.run_demo(settings)
    return 0
