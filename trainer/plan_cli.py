"""`toolgym plan`: will a train config fit the GPUs? Reads the model's config.json, no weights.

    toolgym plan --config configs/gpu-qwen2.5-3b.yaml --gpus 1 --gpu-memory 80GiB [--json]
    toolgym plan --config configs/gpu-qwen2.5-3b.yaml --set data_parallel=fsdp --gpus 4

The arithmetic is trainer/plan.py; this module reads the files, parses sizes and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

from envs.argtypes import open_fraction, positive_int
from trainer.errors import TrainerError
from trainer.plan import GIB, Hardware, Plan, Side, Workload, is_sharded
from trainer.plan_changes import make_plan
from trainer.plan_model import ModelShape, PlanError, shape_from_config

ERRORS: tuple[type[BaseException], ...] = (TrainerError,)

_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of '80GiB' (binary), '80GB' or '141G' (decimal, as GPU vendors and Kubernetes
    count), '1.5TiB'; a bare number is bytes."""
    match = _SIZE.fullmatch(text)
    if not match or (match.group(3) and not match.group(2)):
        raise argparse.ArgumentTypeError(f"{text!r} is no size: write e.g. 80GiB, 80GB or 141G")
    number, prefix, binary, _ = match.groups()
    scale = 1024 ** "kmgt".index(prefix.lower()) * 1024 if binary else _UNITS[prefix.lower()]
    return int(float(number) * scale)


def read_model_config(source: str, model_config: Path | None) -> Any:
    """The transformers config of `model_config` (a config.json or its directory), else of
    the train config's base_model (a local directory, or a hub id: config.json only)."""
    from transformers import AutoConfig

    if model_config is not None:
        path = model_config / "config.json" if model_config.is_dir() else model_config
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise PlanError(f"--model-config {model_config}: {exc.strerror}") from None
        except ValueError:
            raise PlanError(f"--model-config {path}: not a JSON file") from None
        if not isinstance(data, dict) or "model_type" not in data:
            raise PlanError(f"--model-config {path}: no model_type, so no transformers config")
        kind = data.pop("model_type")
        try:
            return AutoConfig.for_model(kind, **data)
        except ValueError:
            raise PlanError(f"--model-config {path}: unknown model_type {kind!r}") from None
    # huggingface_hub logs each of its retries (a line each); the error below says it once
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        where = "a local directory" if Path(source).exists() else "a hub id"
        if where == "a hub id":
            raise PlanError(
                f"base_model {source}: its config.json could not be read ({type(exc).__name__}); "
                "a hub id needs the network (config.json only, no weights): pass a local model "
                "directory or --model-config PATH/config.json"
            ) from None
        raise PlanError(f"base_model {source}: no readable config.json there") from None
    finally:
        hub_logger.setLevel(level)


def add_commands(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser(
        "plan", help="GPU memory per item for a train config, trainer and vLLM: will it fit?"
    )
    plan.add_argument("--config", type=Path, required=True, help="run YAML (see configs/)")
    plan.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    plan.add_argument(
        "--model-config", type=Path, default=None,
        help="the model's config.json (or its directory) instead of base_model's; offline use",
    )  # fmt: skip
    plan.add_argument(
        "--gpus", type=positive_int, default=1,
        help="trainer ranks, one GPU each (data_parallel: fsdp shards the base over them)",
    )  # fmt: skip
    plan.add_argument("--gpu-memory", type=parse_size, default=80 * GIB, help="e.g. 80GiB, 141G")
    plan.add_argument(
        "--tensor-parallel", type=positive_int, default=1, help="GPUs per vLLM server"
    )
    plan.add_argument(
        "--gpu-memory-utilization", type=open_fraction, default=0.9, help="vLLM's (default 0.9)"
    )
    plan.add_argument("--max-loras", type=positive_int, default=2, help="vLLM's (default 2)")
    plan.add_argument("--max-model-len", type=positive_int, default=None, help="vLLM's")
    plan.add_argument(
        "--colocate", action="store_true",
        help="trainer and vLLM share the GPU: the trainer gets 1 - gpu_memory_utilization of it",
    )  # fmt: skip
    plan.add_argument("--json", action="store_true", help="the plan as JSON")
    plan.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from trainer.config import load_config

    config = load_config(args.config, args.set)
    shape = shape_from_config(read_model_config(config.base_model, args.model_config))
    hardware = Hardware(
        gpus=args.gpus,
        gpu_memory=args.gpu_memory,
        tensor_parallel=args.tensor_parallel,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_loras=args.max_loras,
        max_model_len=args.max_model_len,
        colocate=args.colocate,
    )
    plan = make_plan(shape, Workload.from_config(config), hardware)
    print(json.dumps(plan_json(plan), indent=2) if args.json else render(plan, config.base_model))
    return 0


def plan_json(plan: Plan) -> dict[str, Any]:
    def side(value: Side | None) -> dict[str, Any] | None:
        if value is None:
            return None
        return {**dataclasses.asdict(value), "total": value.total, "fits": value.fits}

    return {
        "shape": dataclasses.asdict(plan.shape),
        "parameters": plan.parameters,
        "workload": dataclasses.asdict(plan.workload),
        # the config's key, and whether the plan shards the base (fsdp over more than one GPU)
        "data_parallel": plan.workload.data_parallel,
        "sharded": is_sharded(plan.workload, plan.hardware),
        "hardware": dataclasses.asdict(plan.hardware),
        "trainer": side(plan.trainer),
        "vllm": side(plan.vllm),
        "fits": plan.fits,
        "changes": list(plan.changes),
    }


def describe(shape: ModelShape) -> str:
    tied = "tied" if shape.tied_embeddings else "untied"
    return (
        f"{shape.model_type}: {shape.num_layers} layers, hidden {shape.hidden_size}, "
        f"{shape.num_heads} heads / {shape.num_kv_heads} kv heads x {shape.head_dim}, "
        f"mlp {shape.intermediate_size}, vocab {shape.vocab_size:,} ({tied}), {shape.dtype}"
    )


def render_side(side: Side) -> list[str]:
    lines = [f"{side.title}, per GPU:"]
    lines += [f"  {item.name:<20}{item.bytes / GIB:>9.2f} GiB  {item.note}" for item in side.items]
    verdict = (
        "fits"
        if side.fits
        else f"DOES NOT FIT ({(side.total - side.available) / GIB:.2f} GiB over)"
    )
    total = f"{side.total / GIB:>9.2f} GiB  of {side.available / GIB:.2f} available"
    lines.append(f"  {'total':<20}{total}: {verdict}")
    lines += [f"  - {note}" for note in side.notes]
    return lines


def render(plan: Plan, model: str) -> str:
    lines = [f"{model} ({describe(plan.shape)}): {plan.parameters:,} parameters", ""]
    lines += render_side(plan.trainer)
    if plan.vllm is not None:
        lines += ["", *render_side(plan.vllm)]
    else:
        lines += ["", "vLLM: policy.backend local, rollouts in-process: no vLLM side"]
    if plan.changes:
        lines += ["", "what to change:"] + [f"  - {change}" for change in plan.changes]
    lines += ["", "verdict: " + ("fits" if plan.fits else "does not fit")]
    return "\n".join(lines)
