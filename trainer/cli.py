"""The `toolgym` command. Each package contributes its verbs; this module only wires them."""

from __future__ import annotations

import argparse
import sys

from envs import cli as envs_cli
from rollout import cli as rollout_cli
from toolservers import cli as toolservers_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolgym", description="Train tool-using LLM agents with GRPO."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<verb>")
    toolservers_cli.add_commands(sub)
    envs_cli.add_commands(sub)
    rollout_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; known failures print one line (no traceback) and exit 2."""
    from envs.errors import EnvError
    from rollout.errors import RolloutError
    from toolservers.errors import ToolServerError
    from toolservers.serve import StartupRefusedError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ToolServerError, EnvError, RolloutError, StartupRefusedError, FileNotFoundError) as exc:
        print(f"toolgym: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
