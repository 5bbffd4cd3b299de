"""The plan as a whole (`make_plan`), and what to change when a side does not fit.

Each suggested lever comes with the total it would give, computed with the same arithmetic
as the budget itself (trainer/plan.py), so a suggestion is never a guess.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from trainer.plan import (
    Hardware,
    Plan,
    Side,
    Workload,
    available_bytes,
    gib,
    is_sharded,
    layer_bytes,
    root_bytes,
    shardable_bytes,
    step_items,
    trainer_side,
    vllm_side,
)
from trainer.plan_model import ModelShape, kv_bytes_per_token, parameter_count


def make_plan(shape: ModelShape, work: Workload, hw: Hardware) -> Plan:
    trainer = trainer_side(shape, work, hw)
    vllm = vllm_side(shape, work, hw) if work.servers else None
    changes = tuple(trainer_changes(shape, work, hw, trainer))
    if vllm is not None:
        changes += tuple(vllm_changes(shape, work, hw, vllm))
    return Plan(shape, parameter_count(shape), work, hw, trainer, vllm, changes)


def trainer_changes(shape: ModelShape, work: Workload, hw: Hardware, side: Side) -> list[str]:
    """Levers that bring the trainer under its memory, each with the total it would give, then
    all of them with the longest max_sequence_tokens that fits."""
    if side.fits:
        return []
    weights = parameter_count(shape) * shape.dtype_bytes
    if not is_sharded(work, hw) and weights > side.available:
        return replica_too_large(shape, work, hw, weights)

    def total(lever_work: dict[str, Any], lever_hw: dict[str, Any]) -> tuple[Side, str]:
        other = trainer_side(shape, replace(work, **lever_work), replace(hw, **lever_hw))
        return other, figure(other)

    found = []
    if not work.gradient_checkpointing:
        _, text = total({"gradient_checkpointing": True}, {})
        found.append(f"gradient_checkpointing: true: {text}")
    if work.micro_batch_size > 1:
        _, text = total({"micro_batch_size": 1}, {})
        found.append(f"micro_batch_size 1 (no padding masks): {text}")
    half = work.max_sequence_tokens // 2
    found.append(f"max_sequence_tokens {half}: {total({'max_sequence_tokens': half}, {})[1]}")
    tokens = work.max_sequence_tokens
    while tokens >= 32:  # all levers at once, halving the sequence until it fits
        together = {"micro_batch_size": 1, "max_sequence_tokens": tokens}
        other, text = total({**together, "gradient_checkpointing": True}, {})
        if other.fits:
            levers = f"checkpointing, micro_batch_size 1, max_sequence_tokens {tokens}"
            found.append(f"together: {levers}: {text}")
            break
        tokens //= 2
    found += fsdp_levers(shape, work, hw)
    logits = next(item for item in side.items if item.name == "logits")
    if logits.bytes == max(item.bytes for item in side.items):
        found.append(
            f"the logits ({gib(logits.bytes)}) are the largest item: they grow with micro batch x "
            "sequence x vocabulary (already worked on in chunks): shrink micro_batch_size first"
        )
    if hw.colocate:
        found.append("put vLLM on its own GPU(s): the trainer then has the whole GPU")
    return found


def figure(side: Side) -> str:
    verdict = "fits" if side.fits else "still over"
    return f"{gib(side.total)} of {gib(side.available)}, {verdict}"


def fsdp_min_gpus(shape: ModelShape, work: Workload, hw: Hardware) -> int | None:
    """The fewest fsdp ranks whose per-GPU total fits: shardable / N + unsharded <= available;
    None when what every rank holds in full leaves no room for any shard."""
    room = available_bytes(hw) - unsharded_bytes(shape, work)
    if room <= 0:
        return None
    n = max(2, math.ceil(shardable_bytes(shape, work) / room))
    sharded = replace(work, data_parallel="fsdp")
    # each rank's shard is rounded up item by item: a byte or two may push it over
    while not trainer_side(shape, sharded, replace(hw, gpus=n)).fits:
        n += 1
    return n


def unsharded_bytes(shape: ModelShape, work: Workload) -> int:
    """What every fsdp rank holds in full, whatever N: the root, two gathered layers, one
    micro-batch's activations and logits."""
    step = sum(item.bytes for item in step_items(shape, work))
    return root_bytes(shape, work) + 2 * layer_bytes(shape, work) + step


def no_fsdp_fit(shape: ModelShape, work: Workload, hw: Hardware) -> str:
    return (
        "data_parallel: fsdp cannot fit at any N with these settings: what each GPU holds in "
        f"full (root, two gathered layers, activations, logits) is "
        f"{gib(unsharded_bytes(shape, work))} of {gib(available_bytes(hw))}"
    )


def fsdp_clause(work: Workload) -> str:
    if work.servers:
        return ""
    return (
        "; rollouts must then come from vLLM (policy.backend: vllm): fsdp is refused with "
        "policy.backend local"
    )


def fsdp_levers(shape: ModelShape, work: Workload, hw: Hardware) -> list[str]:
    """Sharding as a lever when the weights fit but the total does not: fsdp over the same
    GPUs (a ddp run's), or over more (a single GPU's, or an fsdp run's with too few)."""
    sharded = replace(work, data_parallel="fsdp")
    n = fsdp_min_gpus(shape, work, hw)
    if not is_sharded(work, hw) and hw.gpus > 1:
        weights = parameter_count(shape) * shape.dtype_bytes
        freed = weights - -(-weights // hw.gpus)
        other = trainer_side(shape, sharded, hw)
        more = f" (fits from --gpus {n})" if n is not None and not other.fits else ""
        return [
            f"data_parallel: fsdp over the same {hw.gpus} GPUs frees (1 - 1/{hw.gpus}) x "
            f"{gib(weights)} of base = {gib(freed)}: {figure(other)}{more}{fsdp_clause(work)}"
        ]
    if n is None:  # more shards cannot help; the other levers shrink what each GPU holds
        return [no_fsdp_fit(shape, work, hw)] if is_sharded(work, hw) else []
    if n <= hw.gpus:  # cannot happen: an fsdp run that fits at n <= its N already fits
        return []
    other = trainer_side(shape, sharded, replace(hw, gpus=n))
    lever = f"data_parallel: fsdp over {n} GPUs (--gpus {n}): {figure(other)}"
    return [f"more GPUs: {lever}" if is_sharded(work, hw) else lever + fsdp_clause(work)]


def replica_too_large(shape: ModelShape, work: Workload, hw: Hardware, weights: int) -> list[str]:
    """The base alone exceeds a GPU and every rank holds all of it: only sharding helps."""
    found = [
        f"the base weights alone ({gib(weights)}) exceed the GPU: more ddp GPUs do not help "
        "(each holds a full replica); shard the base, or use larger GPUs"
    ]
    n = fsdp_min_gpus(shape, work, hw)
    if n is not None:
        other = trainer_side(shape, replace(work, data_parallel="fsdp"), replace(hw, gpus=n))
        found.append(
            f"data_parallel: fsdp over N GPUs holds {gib(weights)} / N on each (needs "
            f"N >= {n}; at --gpus {n}: {figure(other)}){fsdp_clause(work)}"
        )
        return found
    found.append(no_fsdp_fit(shape, work, hw) + fsdp_clause(work))
    tokens = work.max_sequence_tokens
    while tokens >= 32:  # with the other levers, halving the sequence until some N fits
        lean = replace(work, gradient_checkpointing=True, micro_batch_size=1,
                       max_sequence_tokens=tokens)  # fmt: skip
        n = fsdp_min_gpus(shape, lean, hw)
        if n is not None:
            found.append(
                "together: data_parallel: fsdp, checkpointing, micro_batch_size 1, "
                f"max_sequence_tokens {tokens}: needs N >= {n}"
            )
            break
        tokens //= 2
    return found


def vllm_changes(shape: ModelShape, work: Workload, hw: Hardware, side: Side) -> list[str]:
    if side.fits:
        return []
    fixed = sum(item.bytes for item in side.items[:3])
    if fixed > side.available:
        return [f"the weights do not fit one GPU's {gib(side.available)}: raise tensor parallel "
                f"(now {hw.tensor_parallel}) or gpu_memory_utilization"]  # fmt: skip
    per_seq = work.max_sequence_tokens * kv_bytes_per_token(shape, 2, hw.tensor_parallel)
    fit = (side.available - fixed) // per_seq
    if fit == 0:
        room = f"not one sequence of {work.max_sequence_tokens} tokens fits the KV room"
        return [f"{room}: raise tensor parallel (now {hw.tensor_parallel}) or shorten it"]
    servers = max(work.servers, 1)
    need = math.ceil(work.concurrency / max(fit, 1))
    return [
        f"policy.concurrency {fit * servers} or less (now {work.concurrency}): vLLM would "
        "queue and preempt the rest, slower but no crash",
        f"{need} vLLM servers like this one (policy.base_urls), or a larger tensor parallel "
        f"(now {hw.tensor_parallel})",
    ]
