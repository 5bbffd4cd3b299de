"""The tool servers' verbs, `corpus|index|serve|demo tools`: parse, call one function, report.

Two commands carry them: `toolgym` (trainer/cli.py adds every package's verbs) and
`python -m toolservers` (`main` below: these verbs alone, importing nothing from envs,
rollout or trainer, which is what the Docker image and the demo's server processes run).
The parser class and the one-line error handling both commands share live here too, since
toolservers is the package every other one may import and that imports none of them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from toolservers.errors import ToolServerError

if TYPE_CHECKING:
    from toolservers.tools import Toolbox

DEFAULT_READ_BUDGET = 8000
# What these verbs fail with on purpose; `toolgym` knows the union of every package's ERRORS.
# serve's StartupRefusedError is raised as a ToolServerError by cmd_serve (importing
# toolservers.serve here would load uvicorn, FastAPI and MCP for every `--help`).
ERRORS: tuple[type[BaseException], ...] = (
    ToolServerError,
    OSError,  # a path that is missing or unwritable, a port in use
)
STANDALONE_PROG = "python -m toolservers"


def build_parser(prog: str = STANDALONE_PROG) -> argparse.ArgumentParser:
    """`python -m toolservers`: the tool-server verbs only."""
    parser = ToolgymParser(prog=prog, description="toolgym's tool servers: corpus, index, serve.")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="<verb>"))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_verb(build_parser(), argv, ERRORS)


def add_commands(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add the verbs; returns the `demo` group so other packages can add their demos."""
    corpus = sub.add_parser("corpus", help="make a corpus").add_subparsers(
        dest="action", required=True
    )
    synth = corpus.add_parser("synth", help="write the synthetic filings corpus")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_corpus_synth)

    index = sub.add_parser("index", help="search index").add_subparsers(
        dest="action", required=True
    )
    build = index.add_parser("build", help="chunk, embed and index a corpus")
    build.add_argument("--corpus", type=Path, required=True)
    build.add_argument("--index", type=Path, default=None, help="default: CORPUS/index")
    build.add_argument(
        "--embedding-model", default=None, help="hub name or local sentence-transformers directory"
    )
    build.add_argument("--search", choices=["dense", "lexical", "hybrid"], default="dense")
    build.add_argument("--faiss-index", choices=["auto", "flat", "hnsw"], default="auto")
    build.add_argument("--chunk-chars", type=int, default=900, help="largest chunk, characters")
    build.add_argument("--chunk-overlap", type=int, default=200, help="characters shared")
    build.set_defaults(func=cmd_index_build)
    local = index.add_parser("local-model", help="make an offline embedding model from a corpus")
    local.add_argument("--corpus", type=Path, required=True)
    local.add_argument("--out", type=Path, required=True)
    local.add_argument("--dimension", type=int, default=256)
    local.set_defaults(func=cmd_index_local_model)

    trained = index.add_parser(
        "train-model", help="fine-tune a local embedding model on the corpus's own questions"
    )
    trained.add_argument("--corpus", type=Path, required=True)
    trained.add_argument("--train-rows", type=Path, required=True, help="dataset JSONL")
    trained.add_argument("--val-rows", type=Path, help="dataset JSONL to report recall@5 on")
    trained.add_argument("--base-model", type=Path, help="default: a fresh `local-model`")
    trained.add_argument("--out", type=Path, required=True)
    trained.add_argument("--epochs", type=int, default=3)
    trained.set_defaults(func=cmd_index_train_model)

    serve = sub.add_parser("serve", help="serve search/list/read over HTTP or MCP")
    serve.add_argument("--corpus", type=Path, required=True)
    serve.add_argument("--index", type=Path, default=None)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--transport", choices=["http", "mcp", "stdio"], default="http")
    serve.add_argument("--embedding-model", default=None, help="must match the index")
    serve.add_argument(
        "--read-budget", type=int, default=DEFAULT_READ_BUDGET, help="characters per read() result"
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="run without TOOL_BEARER, bound to 127.0.0.1 only (stdio never uses a token)",
    )
    serve.add_argument("--access-log", action="store_true")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="demonstrations").add_subparsers(
        dest="action", required=True
    )
    tools = demo.add_parser("tools", help="corpus + index + both tool servers, offline")
    tools.add_argument("--workdir", type=Path, default=Path(".demo"))
    tools.add_argument("--http-port", type=int, default=8080)
    tools.add_argument("--mcp-port", type=int, default=8081)
    tools.add_argument("--check", action="store_true", help="stop after a self-check")
    tools.set_defaults(func=cmd_demo_tools)
    return demo


def cmd_corpus_synth(args: argparse.Namespace) -> int:
    from toolservers.synth import synthesize_corpus

    summary = synthesize_corpus(args.out, seed=args.seed)
    print(f"wrote {args.out}: {summary}")
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from toolservers.chunking import ChunkingConfig
    from toolservers.index import SearchMode, build_index

    try:
        chunking = ChunkingConfig(max_chars=args.chunk_chars, overlap_chars=args.chunk_overlap)
    except ValidationError as exc:
        raise ToolServerError(f"--chunk-chars/--chunk-overlap: {exc.errors()[0]['msg']}") from None
    if chunking.overlap_chars >= chunking.max_chars:
        raise ToolServerError("--chunk-overlap must be smaller than --chunk-chars")
    manifest = build_index(
        args.corpus,
        search=SearchMode(args.search),
        embedding_model=args.embedding_model,
        index_dir=args.index,
        chunking=chunking,
        faiss_index=args.faiss_index,
    )
    where = args.index or args.corpus / "index"
    print(
        f"indexed {manifest.documents} documents as {manifest.chunks} chunks into {where} "
        f"(search={manifest.search}, model={manifest.embedding_model}, "
        f"faiss={manifest.faiss_index})"
    )
    return 0


def cmd_index_local_model(args: argparse.Namespace) -> int:
    from toolservers.local_model import build_static_model

    build_static_model(args.corpus, args.out, dimension=args.dimension)
    print(f"wrote a static embedding model for {args.corpus} to {args.out}")
    return 0


def cmd_index_train_model(args: argparse.Namespace) -> int:
    from toolservers.local_model import build_static_model
    from toolservers.retrieval_training import train_retrieval_model

    with tempfile.TemporaryDirectory() as scratch:
        base = args.base_model or build_static_model(args.corpus, Path(scratch) / "base")
        report = train_retrieval_model(
            args.corpus, base, args.train_rows, args.out, val_rows=args.val_rows, epochs=args.epochs
        )
    (args.out / "training-report.json").write_text(json.dumps(dataclasses.asdict(report)) + "\n")
    print(f"trained on {report.pairs} question/passage pairs; model in {args.out}")
    if args.val_rows:
        print(
            f"recall@{report.k} of the evidence document on {args.val_rows.name}: "
            f"{report.recall_before:.2f} before, {report.recall_after:.2f} after"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from toolservers.serve import (
        Listener,
        StartupRefusedError,
        Transport,
        resolve_tokens,
        serve,
        serve_stdio,
    )

    if args.read_budget < 200:
        raise ToolServerError("--read-budget must be at least 200 characters")
    transport = Transport(args.transport)
    if transport is Transport.STDIO:
        # No tokens and no host: a pipe owned by the parent process (see serve.stdio_note).
        # stdout is the JSON-RPC channel, so whatever loading prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            toolbox = _open_toolbox(args)
        serve_stdio(toolbox)
        return 0
    try:
        tokens, host = resolve_tokens(args.insecure_no_auth, args.host)
    except StartupRefusedError as exc:  # one of this package's known failures (see ERRORS)
        raise ToolServerError(str(exc)) from None
    toolbox = _open_toolbox(args)
    serve(toolbox, Listener(transport, host, args.port), tokens, access_log=args.access_log)
    return 0


def _open_toolbox(args: argparse.Namespace) -> Toolbox:
    from toolservers.service import open_toolbox
    from toolservers.tools import ToolLimits

    return open_toolbox(
        args.corpus,
        index_dir=args.index,
        embedding_model=args.embedding_model,
        limits=ToolLimits(read_budget=args.read_budget),
    )


def cmd_demo_tools(args: argparse.Namespace) -> int:
    from toolservers.demo import run_tools_demo

    run_tools_demo(args.workdir, args.http_port, args.mcp_port, check_only=args.check)
    return 0


# ---- shared by `toolgym` and `python -m toolservers` ----------------------------------------

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


def run_verb(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    known: tuple[type[BaseException], ...],
) -> int:
    """Parse, run the verb; a known failure prints one line (no traceback) and exits 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        failure = known_failure(exc, known)
        if failure is None:
            raise  # a bug: the traceback is what is needed
        print(f"{parser.prog}: error: {one_line(str(failure))}", file=sys.stderr)
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
