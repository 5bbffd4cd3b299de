"""Will a run fit? GPU memory per item, per GPU, for the trainer and for vLLM: arithmetic only.

Everything here is a pure function of a model's shape (from its config.json, no weights), the
train config and the hardware; trainer/plan_cli.py reads the files and prints. The figures
follow what the code does, not a textbook:

- The trainer (`load_trainable`, trainer/train.py) loads the base with transformers' default
  `dtype="auto"`: the checkpoint's own dtype, float32 when the config names none. PEFT casts the
  LoRA weights to float32 (`autocast_adapter_dtype`), and `torch.optim.AdamW` keeps its two
  moments in the parameters' dtype: 4 + 4 (grad) + 8 bytes per LoRA parameter, no master copy.
- Each data-parallel rank (trainer/distributed.py) holds a whole base replica; DDP adds one
  bucket copy of the LoRA gradients. More GPUs never shrink the per-GPU figure.
- Logprobs and entropy (trainer/loss.py `token_logprobs`) keep the model's (batch, seq, vocab)
  logits for backward, which builds their gradient beside them: 2 x dtype bytes per token per
  vocabulary entry at the peak, plus two float32 chunks of up to 2^24 elements (the float32 work is
  done a chunk of positions at a time, forward and backward).
- The KL reference is the same model with its adapter disabled, under no_grad, without entropy:
  no weights, and its transient logits sit beside the policy's kept ones, as the gradient does
  later: within the logits' 2 x dtype peak.
- Activations are what autograd keeps for backward with SDPA attention, term by term in
  trainer/plan_model.py; tests/trainer/test_plan.py measures them, and the peak, on small models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from rollout.vllm import round_lora_rank
from trainer.plan_model import (
    FP32,
    ModelShape,
    activation_bytes,
    kv_bytes_per_token,
    logits_bytes,
    logits_chunk_positions,
    lora_parameter_count,
    parameter_count,
)

GIB = 1024**3
# vLLM: CUDA context, CUDA graphs and the profiling forward's activations, outside the KV cache.
# A round allowance (vLLM logs its own figure at start-up as "non-torch memory" + activations).
VLLM_RUNTIME_BYTES = 2 * GIB
VLLM_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class MemoryItem:
    name: str
    bytes: int
    note: str


@dataclass(frozen=True)
class Side:
    """One process's memory on one GPU: its items, what it may use, and whether they fit."""

    title: str
    items: tuple[MemoryItem, ...]
    available: int
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(item.bytes for item in self.items)

    @property
    def fits(self) -> bool:
        return self.total <= self.available


@dataclass(frozen=True)
class Hardware:
    gpus: int = 1  # trainer ranks, one GPU each
    gpu_memory: int = 80 * GIB
    tensor_parallel: int = 1  # GPUs per vLLM server
    gpu_memory_utilization: float = 0.9  # rollout/vllm.py's default
    max_loras: int = 2  # rollout/vllm.py's default: current and previous adapter
    max_model_len: int | None = None  # vLLM's; default the model's max_position_embeddings
    colocate: bool = False  # trainer and vLLM on the same GPU(s)


@dataclass(frozen=True)
class Workload:
    """The train config's figures that size memory."""

    micro_batch_size: int
    max_sequence_tokens: int
    lora_rank: int
    lora_targets: tuple[str, ...]
    kl_coef: float
    concurrency: int  # episodes at once, over all servers
    servers: int  # vLLM servers (policy.base_urls); 0: the local backend, no vLLM
    group_size: int
    gradient_checkpointing: bool = False

    @classmethod
    def from_config(cls, config: Any) -> Workload:
        policy = config.policy
        return cls(
            micro_batch_size=config.micro_batch_size,
            max_sequence_tokens=config.max_sequence_tokens,
            lora_rank=config.lora.rank,
            lora_targets=tuple(config.lora.target_modules),
            kl_coef=config.kl_coef,
            concurrency=policy.concurrency,
            servers=len(policy.base_urls) if policy.backend == "vllm" else 0,
            group_size=config.group_size,
            gradient_checkpointing=config.gradient_checkpointing,
        )


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    parameters: int
    workload: Workload
    hardware: Hardware
    trainer: Side
    vllm: Side | None
    changes: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return self.trainer.fits and (self.vllm is None or self.vllm.fits)


def gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


def trainer_side(shape: ModelShape, work: Workload, hw: Hardware) -> Side:
    d = shape.dtype_bytes
    params = parameter_count(shape)
    targets = list(work.lora_targets)
    lora = lora_parameter_count(shape, work.lora_rank, targets)
    b, s = work.micro_batch_size, work.max_sequence_tokens
    act = activation_bytes(shape, work.lora_rank, targets, b, s, work.gradient_checkpointing)
    logits_peak, _ = logits_bytes(shape, b, s)
    chunk = logits_chunk_positions(shape, b, s)
    kind = "with" if work.gradient_checkpointing else "without"
    items = [
        MemoryItem(
            "base weights", params * d, f"{params:,} params x {d} B ({shape.dtype}), frozen"
        ),
        MemoryItem("LoRA weights", lora * FP32, f"{lora:,} params, rank {work.lora_rank}, float32"),
        MemoryItem("LoRA grads", lora * FP32, "float32"),
        MemoryItem("AdamW moments", lora * 2 * FP32, "2 x float32, no master copy"),
    ]
    if hw.gpus > 1:
        items.append(MemoryItem("DDP grad buckets", lora * FP32, "one more copy of the grads"))
    items.append(MemoryItem(
        "activations", act.saved,
        f"{kind} gradient checkpointing: {b} x {s} tokens kept for backward",
    ))  # fmt: skip
    if act.recompute:
        note = "one layer rebuilt in backward" + (", with its mask" if b > 1 else "")
        items.append(MemoryItem("recomputed layer", act.recompute, note))
    if act.masks:
        note = f"{b} x {s}^2 x {d} B per layer: a padded micro-batch's mask, kept by SDPA"
        items.append(MemoryItem("attention masks", act.masks, note))
    items.append(MemoryItem(
        "logits", logits_peak,
        f"{b} x {s} x {shape.vocab_size:,} vocab x 2 x {d} B: kept and their gradient; "
        f"float32 work {chunk} positions at a time",
    ))  # fmt: skip
    ref = "adapter disabled on the same base, no_grad: no extra weights"
    items.append(MemoryItem("KL reference", 0, ref if work.kl_coef > 0 else "kl_coef 0: none"))
    available = hw.gpu_memory
    if hw.colocate:
        available = int(hw.gpu_memory * (1 - hw.gpu_memory_utilization))
    notes = (
        f"{hw.gpus} data-parallel rank(s), one GPU each, each with a full base replica",
        "items are summed: the logits' temporaries and a recomputed layer never coexist, so "
        "the total is an upper bound for sequences of max_sequence_tokens",
    )
    return Side("trainer", tuple(items), available, notes)


def vllm_side(shape: ModelShape, work: Workload, hw: Hardware) -> Side:
    tp = hw.tensor_parallel
    d = 2  # vLLM's --dtype auto serves float32 checkpoints in 16 bits
    params = parameter_count(shape)
    rank = round_lora_rank(work.lora_rank)  # the --max-lora-rank `toolgym vllm serve` passes
    dims = shape.linear_dims()
    slot = shape.num_layers * rank * sum(sum(dims[m]) for m in VLLM_LORA_MODULES) * d
    per_token = kv_bytes_per_token(shape, d, tp)
    per_server = math.ceil(work.concurrency / max(work.servers, 1))
    need = per_server * work.max_sequence_tokens * per_token
    budget = int(hw.gpu_memory * hw.gpu_memory_utilization)
    items = (
        MemoryItem(
            "weights", params * d // tp, f"{params:,} params x {d} B / tensor parallel {tp}"
        ),
        MemoryItem("LoRA slots", hw.max_loras * slot // tp,
                   f"--max-loras {hw.max_loras} x rank {rank}, every projection"),
        MemoryItem("runtime", VLLM_RUNTIME_BYTES, "CUDA graphs, profiling activations (allowance)"),
        MemoryItem("KV cache", need,
                   f"{per_server} sequences x {work.max_sequence_tokens} tokens x "
                   f"{per_token:,} B/token"),
    )  # fmt: skip
    fixed = sum(item.bytes for item in items[:3])
    room = max(budget - fixed, 0)
    fit = room // max(work.max_sequence_tokens * per_token, 1)
    longest = hw.max_model_len or shape.max_position_embeddings or work.max_sequence_tokens
    notes = [
        f"{max(work.servers, 1)} server(s), {per_server} episodes at once each "
        f"(policy.concurrency {work.concurrency} = {work.concurrency / work.group_size:g} "
        f"groups of {work.group_size})",
        f"KV room {gib(room)}: {fit} sequences of {work.max_sequence_tokens} tokens at once "
        f"({room // max(per_token, 1):,} tokens)",
    ]
    if longest * per_token > room:
        notes.append(
            f"vLLM will not start: one sequence of max_model_len {longest} needs "
            f"{gib(longest * per_token)} of KV cache; pass --max-model-len to vllm serve"
        )
    return Side("vLLM", items, budget, tuple(notes))


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
    weights = side.items[0].bytes
    if weights > side.available:
        return [
            f"the base weights alone ({gib(weights)}) exceed the GPU: shard them with FSDP "
            "(not in toolgym yet) or use larger GPUs; more data-parallel GPUs do not help, "
            "each holds a full replica"
        ]

    def total(lever_work: dict[str, Any], lever_hw: dict[str, Any]) -> tuple[Side, str]:
        other = trainer_side(shape, replace(work, **lever_work), replace(hw, **lever_hw))
        verdict = "fits" if other.fits else "still over"
        return other, f"{gib(other.total)} of {gib(other.available)}, {verdict}"

    found = []
    if not work.gradient_checkpointing:
        _, figure = total({"gradient_checkpointing": True}, {})
        found.append(f"gradient_checkpointing: true: {figure}")
    if work.micro_batch_size > 1:
        _, figure = total({"micro_batch_size": 1}, {})
        found.append(f"micro_batch_size 1 (no padding masks): {figure}")
    half = work.max_sequence_tokens // 2
    found.append(f"max_sequence_tokens {half}: {total({'max_sequence_tokens': half}, {})[1]}")
    tokens = work.max_sequence_tokens
    while tokens >= 32:  # all levers at once, halving the sequence until it fits
        together = {"micro_batch_size": 1, "max_sequence_tokens": tokens}
        other, figure = total({**together, "gradient_checkpointing": True}, {})
        if other.fits:
            levers = f"checkpointing, micro_batch_size 1, max_sequence_tokens {tokens}"
            found.append(f"together: {levers}: {figure}")
            break
        tokens //= 2
    logits = next(item for item in side.items if item.name == "logits")
    if logits.bytes == max(item.bytes for item in side.items):
        found.append(
            f"the logits ({gib(logits.bytes)}) are the largest item: they grow with micro batch x "
            "sequence x vocabulary (already worked on in chunks): shrink micro_batch_size first"
        )
    if hw.colocate:
        found.append("put vLLM on its own GPU(s): the trainer then has the whole GPU")
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
