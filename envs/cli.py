"""`toolgym envs|data|grade` subcommands: parse, call one function, return its exit code."""

from __future__ import annotations

import argparse
from pathlib import Path

from envs.errors import EnvConfigError, EnvError
from envs.graders.errors import GraderError

# What these verbs fail with on purpose; `toolgym` knows the union of every package's ERRORS.
ERRORS: tuple[type[BaseException], ...] = (
    EnvError,  # DatasetError and the YAML/registration errors among them
    GraderError,  # `grade`'s failures; grader specs given outside an environment
    OSError,  # a path that is missing or unwritable
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    environments = sub.add_parser("envs", help="registered environments")
    env_actions = environments.add_subparsers(dest="action", required=True)
    listing = env_actions.add_parser("list", help="every registered environment and its source")
    listing.add_argument(
        "--yaml",
        type=Path,
        nargs="*",
        default=[],
        help="also register these YAML environment files",
    )
    listing.set_defaults(func=cmd_envs_list)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="action", required=True)
    validate = data.add_parser("validate", help="check dataset files")
    validate.add_argument("files", type=Path, nargs="+")
    validate.add_argument("--corpus", type=Path, default=None)
    validate.set_defaults(func=cmd_data_validate)
    build = data.add_parser("build", help="train/val questions from a corpus's facts")
    build.add_argument("--corpus", type=Path, required=True)
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument(
        "--count",
        action="append",
        default=[],
        metavar="TASK=N",
        help="rows of a task type (repeat; only the task types named are built); "
        "default: lookup=300 ratio=150 growth=150 comparison=100 aggregate=100 difference=100",
    )
    build.set_defaults(func=cmd_data_build)
    tatqa = data.add_parser("import-tatqa", help="corpus + rows from TAT-QA-format JSON")
    tatqa.add_argument("json", type=Path)
    tatqa.add_argument("--out", type=Path, required=True)
    tatqa.set_defaults(func=cmd_data_import_tatqa)

    grade = sub.add_parser("grade", help="grade one answer against a reference")
    grade.add_argument("--reference", required=True)
    grade.add_argument("--answer", required=True)
    grade.add_argument("--tolerance-rel", type=float, default=None)
    grade.add_argument(
        "--require-unit",
        action="store_true",
        help="the answer must state the scale or %% the reference states ('842.5' against "
        "'$842.5 million' is then wrong)",
    )
    grade.set_defaults(func=cmd_grade)


def cmd_envs_list(args: argparse.Namespace) -> int:
    import envs

    for path in args.yaml:
        envs.register_yaml(path)
    entries = envs.list_envs()
    width = max(len(e.id) for e in entries)
    for entry in entries:
        print(f"{entry.id:<{width}}  {entry.source}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from envs.data.validate import validate_command

    # A path that is not there is a mistake on the command line, not a finding about the
    # data: say so in one line (exit 2) instead of reporting an empty dataset (exit 1).
    for path in args.files:
        if not path.is_file():
            raise EnvConfigError(f"{path}: {_not_a_file(path)}")
    if args.corpus is not None and not args.corpus.is_dir():
        raise EnvConfigError(f"--corpus {args.corpus}: no such directory")
    return validate_command(args.files, args.corpus)


def _not_a_file(path: Path) -> str:
    return "a directory, not a dataset file" if path.is_dir() else "no such file"


def cmd_data_build(args: argparse.Namespace) -> int:
    from envs.data.build import build_command

    return build_command(args.corpus, args.out, args.seed, args.count)


def cmd_data_import_tatqa(args: argparse.Namespace) -> int:
    from envs.data.tatqa import import_tatqa_command

    return import_tatqa_command(args.json, args.out)


def cmd_grade(args: argparse.Namespace) -> int:
    from envs.graders import grade_command

    text, code = grade_command(
        args.reference, args.answer, args.tolerance_rel, require_unit=args.require_unit
    )
    if code != 0:  # a bad tolerance or a reference without one figure: one line, exit 2
        raise GraderError(text.splitlines()[-1].removeprefix("error: "))
    print(text)
    return code
