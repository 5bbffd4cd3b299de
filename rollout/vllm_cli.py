"""`toolgym vllm serve`: start vLLM for rollouts with the flags they need, wait until Ctrl-C.

Errors raise rollout.errors exceptions; the main CLI prints them as one line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from envs.argtypes import open_fraction, port, positive_float, positive_int
from rollout.errors import LaunchError, RolloutConfigError, RolloutError
from rollout.vllm import VllmServeConfig, environment_changes, redacted, vllm_command
from rollout.vllm_group import (
    ServerPlan,
    available_gpus,
    launch_group,
    parse_gpus,
    plan_servers,
    stop_all,
    url_lines,
)


def add_vllm_commands(sub: argparse._SubParsersAction) -> None:
    vllm = sub.add_parser("vllm", help="the vLLM inference server (runs in its own process)")
    actions = vllm.add_subparsers(dest="action", required=True)
    serve = actions.add_parser("serve", help="start vLLM with tool calling, logprobs and LoRA")
    serve.add_argument("--model", required=True, help="HF model id or local path")
    serve.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an adapter to serve from the start (repeatable)",
    )
    serve.add_argument(
        "--lora-rank", type=positive_int, default=None, help="PEFT rank (rounded up)"
    )
    serve.add_argument("--max-loras", type=positive_int, default=2)
    serve.add_argument(
        "--enable-lora", action="store_true", help="LoRA on with no adapter yet (publish later)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port, default=8000)
    serve.add_argument("--served-model-name", default=None)
    serve.add_argument("--max-model-len", type=positive_int, default=None)
    serve.add_argument("--gpu-memory-utilization", type=open_fraction, default=0.9)
    serve.add_argument(
        "--servers",
        type=positive_int,
        default=1,
        help="start N servers on ports PORT..PORT+N-1, each on its own GPU(s)",
    )
    serve.add_argument(
        "--tensor-parallel-size",
        type=positive_int,
        default=1,
        metavar="T",
        help="GPUs per server (consecutive ones): N servers need N*T GPUs",
    )
    serve.add_argument(
        "--gpus",
        default=None,
        metavar="LIST",
        help="GPU ids to share out, e.g. 0,1,2,3 (default: CUDA_VISIBLE_DEVICES, else nvidia-smi)",
    )
    runner = serve.add_mutually_exclusive_group()
    runner.add_argument("--vllm-bin", default="vllm", help="the `vllm` of vLLM's own venv")
    runner.add_argument("--docker", default=None, metavar="IMAGE", help="e.g. vllm/vllm-openai")
    serve.add_argument("--tool-call-parser", default=None, help="default: from the model name")
    serve.add_argument(
        "--extra-arg",
        action="append",
        default=[],
        help="passed to vllm serve (repeatable); a flag needs '=': --extra-arg=--enforce-eager",
    )
    serve.add_argument("--log", type=Path, default=Path("vllm.log"))
    serve.add_argument("--health-timeout", type=positive_float, default=900.0, metavar="S")
    serve.add_argument("--dry-run", action="store_true", help="print the command and env, exit")
    serve.set_defaults(func=cmd_vllm_serve)


def _lora_modules(items: list[str]) -> dict[str, str]:
    modules: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise RolloutConfigError(f"--lora takes NAME=PATH, not {item!r}")
        modules[name] = path
    return modules


def serve_config(args: argparse.Namespace) -> VllmServeConfig:
    try:
        return _serve_config(args)
    except ValidationError as exc:  # settings the argument types do not cover
        problems = "; ".join(
            f"--{'-'.join(str(x) for x in e['loc']).replace('_', '-')}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise RolloutConfigError(problems) from None


def _serve_config(args: argparse.Namespace) -> VllmServeConfig:
    return VllmServeConfig(
        model=args.model,
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        tool_call_parser=args.tool_call_parser,
        enable_lora=args.enable_lora,
        lora_modules=_lora_modules(args.lora),
        lora_rank=args.lora_rank,
        max_loras=args.max_loras,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
        extra_args=args.extra_arg,
        vllm_bin=args.vllm_bin,
        docker_image=args.docker,
    )


def server_plans(args: argparse.Namespace) -> tuple[list[ServerPlan], str | None]:
    """The servers to start, and a note when the GPU list had to be assumed (dry run only)."""
    config = serve_config(args)
    needed = args.servers * config.tensor_parallel_size
    gpus = parse_gpus(args.gpus) if args.gpus else available_gpus() if needed > 1 else None
    note = None
    if gpus is None and needed > 1 and args.dry_run:
        gpus = [str(index) for index in range(needed)]
        note = (
            f"# no GPU list here (CUDA_VISIBLE_DEVICES unset, no nvidia-smi): GPUs 0-{needed - 1}"
        )
    return plan_servers(config, args.servers, gpus, args.log), note


def _show_dry_run(plans: list[ServerPlan], note: str | None, name: str) -> None:
    if note:
        print(note)
    for plan in plans:
        env = " ".join(f"{key}={value}" for key, value in environment_changes(plan.config).items())
        print(f"{env} {' '.join(redacted(vllm_command(plan.config)))}  # log: {plan.log_path}")
    for line in url_lines(name, [plan.url for plan in plans]):
        print(line)


def cmd_vllm_serve(args: argparse.Namespace) -> int:
    plans, note = server_plans(args)
    name = args.served_model_name or args.model
    if args.dry_run:
        _show_dry_run(plans, note, name)
        return 0
    # Ctrl-C and SIGTERM both stop the servers, even when started from a shell that ignores
    # SIGINT for background jobs (the disposition would otherwise be inherited).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logs = ", ".join(str(plan.log_path) for plan in plans)
    count = f"{len(plans)} vLLM servers" if len(plans) > 1 else "vLLM"
    print(f"starting {count} (log: {logs}) ...", flush=True)
    servers = launch_group(plans, health_timeout_s=args.health_timeout)
    for plan in plans:
        on = f" on GPU(s) {','.join(plan.config.gpus)}" if plan.config.gpus is not None else ""
        print(f"vLLM is healthy at {plan.url} (serving {name}{on})")
    print("\n".join(url_lines(name, [plan.url for plan in plans])))
    print("press Ctrl-C to stop", flush=True)
    try:
        while all(server.running() for server in servers):
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping vLLM ...", flush=True)
        stop_all(servers)
        return 0
    gone = next(server for server in servers if not server.running())
    stop_all(servers)
    others = " (the other servers were stopped)" if len(servers) > 1 else ""
    raise LaunchError(
        f"vLLM at {gone.url} exited on its own with code {gone.process.returncode}; "
        f"see {gone.log_path}{others}"
    )


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m rollout.vllm_cli vllm serve ...`), errors as one line."""
    parser = argparse.ArgumentParser(prog="toolgym")
    add_vllm_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (RolloutError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
