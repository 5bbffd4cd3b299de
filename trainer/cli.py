"""The `toolgym` command. Each package contributes its verbs; this module only wires them."""

from __future__ import annotations

import argparse
import sys

from toolservers import cli as toolservers_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolgym", description="Train tool-using LLM agents with GRPO."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<verb>")
    toolservers_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return toolservers_cli.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
