"""The `toolgym` command, composed: each package's verbs, and each package's known errors.

Every package with verbs has `add_commands(sub)` and `ERRORS` (the exceptions it raises on
purpose) next to them: toolservers/cli.py, envs/cli.py, rollout/cli.py, trainer/verbs.py.
This module only puts them together; a known error prints one line and exits 2, anything else
is a bug and keeps its traceback. The tool servers alone: `python -m toolservers`.
"""

from __future__ import annotations

import argparse
import sys

from envs import cli as envs_cli
from rollout import cli as rollout_cli
from toolservers import cli as toolservers_cli
from toolservers.cli import ToolgymParser, known_failure, one_line, run_verb
from trainer import plan_cli
from trainer import verbs as trainer_verbs

KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    toolservers_cli.ERRORS
    + envs_cli.ERRORS
    + rollout_cli.ERRORS
    + trainer_verbs.ERRORS
    + plan_cli.ERRORS
)

__all__ = ["KNOWN_ERRORS", "ToolgymParser", "build_parser", "known_failure", "main", "one_line"]


def build_parser() -> argparse.ArgumentParser:
    parser = ToolgymParser(prog="toolgym", description="Train tool-using LLM agents with GRPO.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<verb>")
    demo = toolservers_cli.add_commands(sub)
    envs_cli.add_commands(sub)
    rollout_cli.add_commands(sub)
    trainer_verbs.add_commands(sub, demo)
    plan_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; known failures print one line (no traceback) and exit 2."""
    return run_verb(build_parser(), argv, KNOWN_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
