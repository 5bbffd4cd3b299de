"""`toolgym tasks generate`: tasks for an environment from its own tool server.

    toolgym tasks generate --env acme/Notes-v0 --model Qwen/Qwen2.5-72B-Instruct@http://h:8000/v1 \\
        --n 200 --seed 0 --out data/notes [--policy Qwen/Qwen2.5-3B-Instruct@http://h:8001/v1]

Steps: explore the env's server read-only, have the model write tasks grounded in what was
observed, check them (envs.taskgen), then, with --policy, measure each task's pass rate with
the base policy (rollout.task_probe) and stratify the train/val split by it. Writes
OUT/train.jsonl, OUT/val.jsonl, OUT/observations.jsonl and OUT/generation-report.json, all
at the end (a failed run leaves OUT as it was). Every known failure is one line, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from envs.argtypes import (
    fraction,
    non_negative_float,
    non_negative_int,
    open_fraction,
    positive_float,
    positive_int,
)
from envs.data.report import count_rows, render_counts
from envs.data.rows import Row
from envs.taskgen.dedup import DEFAULT_EMBEDDING_MODEL, PromptEmbedder
from envs.taskgen.model import ModelConfig
from envs.taskgen.output import (
    check_out_dir,
    rows_text,
    split_rows,
    task_rows,
    with_pass_rates,
    write_outputs,
)
from envs.taskgen.pipeline import GenerationRequest, GenerationResult, check_env_id, generate_tasks
from envs.taskgen.records import ToolInfo
from rollout.policy import DEFAULT_DEVICE, DEFAULT_REQUEST_TIMEOUT_S
from rollout.policy_spec import PolicySpec, parse_policy
from rollout.task_probe import ProbeReport, ProbeSettings, probe_tasks

REPORT_FILE = "generation-report.json"


def model_at_url(text: str) -> tuple[str, str]:
    """`NAME@URL`: the model name and its OpenAI-compatible server."""
    name, at, url = text.rpartition("@")
    if not at or not name.strip() or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected NAME@http://host:port/v1, got {text!r}")
    return name.strip(), url


def below_one(text: str) -> float:
    value = fraction(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to below 1, got {text!r}")
    return value


def add_tasks_commands(sub: Any) -> None:
    tasks = sub.add_parser("tasks", help="tasks for an environment").add_subparsers(
        dest="action", required=True
    )
    gen = tasks.add_parser(
        "generate", help="explore an env's tool server read-only; a model writes checked tasks"
    )
    gen.add_argument("--env", required=True, help="registered environment id")
    gen.add_argument("--model", required=True, type=model_at_url, help="NAME@URL writing tasks")
    gen.add_argument("--api-key-env", help="variable holding the model server's API key")
    gen.add_argument("--n", type=positive_int, default=200, help="tasks wanted")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", type=Path, required=True, help="directory for the files")
    gen.add_argument(
        "--allow-writes",
        action="store_true",
        help="also call tools not annotated readOnlyHint: true (they may change the server)",
    )
    gen.add_argument("--max-calls", type=positive_int, default=100, help="exploration budget")
    gen.add_argument("--per-request", type=positive_int, default=10, help="tasks per request")
    gen.add_argument(
        "--max-retries", type=non_negative_int, default=2, help="retries of a malformed reply"
    )
    gen.add_argument(
        "--temperature", type=non_negative_float, default=0.7, help="the task model's sampling"
    )
    gen.add_argument("--val-share", type=below_one, default=0.2, help="share of rows in val")
    gen.add_argument(
        "--embedding-model",
        default=DEFAULT_EMBEDDING_MODEL,
        help="sentence-transformers directory or hub name (cached, when offline), for dedup",
    )
    gen.add_argument(
        "--dedup-threshold",
        type=open_fraction,
        default=0.9,
        help="prompts at or above this cosine similarity are near-duplicates",
    )
    gen.add_argument("--tools-url", help="override the environment's tool server URL")
    gen.add_argument("--transport", choices=["http", "mcp"], default=None)
    gen.add_argument("--no-progress", action="store_true")
    probe = gen.add_argument_group("difficulty (measured with the base policy)")
    probe.add_argument("--policy", help="MODEL_DIR[+ADAPTER_DIR] or NAME@URL: probe every task")
    probe.add_argument("--attempts", type=positive_int, default=4, help="episodes per task")
    probe.add_argument("--threshold", type=fraction, default=0.5, help="reward = success")
    probe.add_argument("--probe-max-tokens", type=positive_int, default=512, help="per turn")
    probe.add_argument("--concurrency", type=positive_int, default=16, help="episodes at once")
    probe.add_argument("--device", default=DEFAULT_DEVICE, help="local policy: torch device")
    probe.add_argument(
        "--request-timeout",
        type=positive_float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help="served policy: seconds per call",
    )
    gen.set_defaults(func=cmd_tasks_generate)


class TasksReport(BaseModel):
    """OUT/generation-report.json."""

    env_id: str
    model: str
    seed: int
    n_requested: int
    allow_writes: bool
    tools: list[dict[str, Any]]
    exploration: dict[str, Any]
    generation: dict[str, Any]
    checks: dict[str, Any]
    probe: ProbeReport | None
    split: dict[str, Any]
    files: list[str]


def generation_request(args: argparse.Namespace) -> GenerationRequest:
    name, url = args.model
    model = ModelConfig(
        name=name, base_url=url, api_key_env=args.api_key_env, temperature=args.temperature
    )
    env_kwargs = {k: v for k, v in (("tools_url", args.tools_url), ("transport", args.transport))}
    return GenerationRequest(
        env_id=args.env,
        model=model,
        n=args.n,
        seed=args.seed,
        allow_writes=args.allow_writes,
        max_calls=args.max_calls,
        per_request=args.per_request,
        max_retries=args.max_retries,
        dedup_threshold=args.dedup_threshold,
        progress=not args.no_progress,
        env_kwargs={k: v for k, v in env_kwargs.items() if v is not None},
    )


def probe_settings(args: argparse.Namespace) -> ProbeSettings:
    return ProbeSettings(
        attempts=args.attempts,
        threshold=args.threshold,
        max_tokens=args.probe_max_tokens,
        concurrency=args.concurrency,
        seed=args.seed,
        progress=not args.no_progress,
    )


def tool_summary(tools: list[ToolInfo], result: GenerationResult) -> list[dict[str, Any]]:
    calls: dict[str, int] = {}
    for observation in result.observations:
        calls[observation.tool] = calls.get(observation.tool, 0) + 1
    return [
        {
            "name": t.name,
            "read_only": t.read_only,
            "calls": calls.get(t.name, 0),
            **({"skipped": t.skipped} if t.skipped else {}),
        }
        for t in tools
    ]


def cmd_tasks_generate(args: argparse.Namespace) -> int:
    # Cheap checks first: a typo must not wait for an embedding model or a server.
    check_env_id(args.env)
    check_out_dir(args.out)
    request = generation_request(args)
    spec: PolicySpec | None = None
    if args.policy:
        spec = parse_policy(args.policy, device=args.device, request_timeout_s=args.request_timeout)
    embedder = PromptEmbedder(args.embedding_model)
    result = asyncio.run(generate_tasks(request, embedder))
    rows = task_rows(args.env, result.tasks)
    probe: ProbeReport | None = None
    if spec is not None:
        measured, probe = asyncio.run(
            probe_tasks(args.env, rows, spec, probe_settings(args), request.env_kwargs)
        )
        rows = with_pass_rates(rows, measured)
    train, val = split_rows(rows, args.val_share, args.seed)
    report = build_report(args, result, probe, train, val)
    write_outputs(args.out, output_files(result, train, val, report))
    print(summary_text(args.out, report, train, val))
    return 0


def build_report(
    args: argparse.Namespace,
    result: GenerationResult,
    probe: ProbeReport | None,
    train: list[Row],
    val: list[Row],
) -> TasksReport:
    name, url = args.model
    counts = {"train": count_rows(train), "val": count_rows(val)}
    return TasksReport(
        env_id=args.env,
        model=f"{name}@{url}",
        seed=args.seed,
        n_requested=args.n,
        allow_writes=args.allow_writes,
        tools=tool_summary(result.tools, result),
        exploration=result.exploration.model_dump(),
        generation=result.generation,
        checks=result.checks.model_dump(),
        probe=probe,
        split={
            "val_share": args.val_share,
            "stratified_by": "measured difficulty" if probe else "none (seeded random)",
            **{k: v.model_dump() for k, v in counts.items()},
            "unlabelled": sum(1 for r in train + val if r.reference_answer is None),
        },
        files=["train.jsonl", "val.jsonl", "observations.jsonl", REPORT_FILE],
    )


def output_files(
    result: GenerationResult, train: list[Row], val: list[Row], report: TasksReport
) -> dict[str, str]:
    observations = "".join(o.model_dump_json() + "\n" for o in result.observations)
    return {
        "train.jsonl": rows_text(train),
        "val.jsonl": rows_text(val),
        "observations.jsonl": observations,
        REPORT_FILE: json.dumps(report.model_dump(mode="json"), indent=2) + "\n",
    }


def summary_text(out: Path, report: TasksReport, train: list[Row], val: list[Row]) -> str:
    exploration, checks = report.exploration, report.checks
    dropped = ", ".join(f"{k} {v}" for k, v in checks["dropped"].items()) or "none"
    lines = [
        f"explored {report.env_id}: {exploration['calls']} call(s), "
        f"{exploration['resource_reads']} resource read(s), {exploration['errors']} error(s)",
        f"model: {report.generation['requests']} request(s), "
        f"{report.generation['malformed_replies']} malformed replies, "
        f"{checks['candidates']} candidate task(s)",
        f"kept {checks['kept']} of {report.n_requested} asked for; dropped: {dropped}",
    ]
    if report.probe is not None:
        p = report.probe
        lines.append(
            f"probe ({p.attempts_per_task} attempts, {p.policy}): {p.probed} task(s) measured, "
            f"pass@1 {p.pass_at_1:.3f} pass@{p.attempts_per_task} {p.pass_at_k:.3f}; "
            f"{p.unlabelled} without a reference answer (unmeasured: RULER rewards)"
        )
    lines += ["", render_counts({"train": count_rows(train), "val": count_rows(val)}), ""]
    lines.append(f"wrote {out}/train.jsonl, val.jsonl, observations.jsonl, {REPORT_FILE}")
    return "\n".join(lines)
