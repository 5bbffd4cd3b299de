"""Will a run fit? GPU memory per item, per GPU, for the trainer and for vLLM: arithmetic only.

Everything here is a pure function of a model's shape (from its config.json, no weights), the
train config and the hardware; trainer/plan_changes.py adds what to change when a side does not
fit, trainer/plan_cli.py reads the files and prints. The figures follow what the code does, not
a textbook:

- The trainer (`load_trainable`, trainer/train.py) loads the base with transformers' default
  `dtype="auto"`: the checkpoint's own dtype, float32 when the config names none. PEFT casts the
  LoRA weights to float32 (`autocast_adapter_dtype`), and `torch.optim.AdamW` keeps its two
  moments in the parameters' dtype: 4 + 4 (grad) + 8 bytes per LoRA parameter, no master copy.
- `data_parallel: ddp`: each rank (trainer/distributed.py) holds a whole base replica; DDP adds
  one bucket copy of the LoRA gradients. More GPUs never shrink the per-GPU figure.
- `data_parallel: fsdp` over N > 1 ranks (trainer/fsdp.py, FSDP2's defaults): each rank holds
  1/N of the base, LoRA weights, grads and AdamW moments, plus in full the root (embeddings,
  lm_head, final norm: FSDP2 never reshards the root after forward) and two decoder layers
  (the one running and the next, prefetched). Activations and logits are each rank's own.
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
from dataclasses import dataclass
from typing import Any, Literal

from rollout.vllm import round_lora_rank
from trainer.plan_model import (
    FP32,
    ModelShape,
    activation_bytes,
    kv_bytes_per_token,
    layer_parameter_count,
    logits_bytes,
    logits_chunk_positions,
    lora_layer_count,
    lora_parameter_count,
    lora_root_count,
    parameter_count,
    root_parameter_count,
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
    data_parallel: Literal["ddp", "fsdp"] = "ddp"  # fsdp shards the base over the ranks

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
            data_parallel=config.data_parallel,
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


def is_sharded(work: Workload, hw: Hardware) -> bool:
    """Whether the trainer shards the base: fsdp over several ranks. One process alone is
    never wrapped (trainer/distributed.py wrap_model), whatever data_parallel says."""
    return work.data_parallel == "fsdp" and hw.gpus > 1


def replica_items(shape: ModelShape, work: Workload, hw: Hardware) -> list[MemoryItem]:
    """ddp (or one process): a whole base and the whole LoRA state on every GPU."""
    d = shape.dtype_bytes
    params = parameter_count(shape)
    lora = lora_parameter_count(shape, work.lora_rank, list(work.lora_targets))
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
    return items


def root_bytes(shape: ModelShape, work: Workload) -> int:
    """FSDP's root unit in full: embeddings, lm_head unless tied, final norm (and their LoRA)."""
    lora = lora_root_count(shape, work.lora_rank, list(work.lora_targets))
    return root_parameter_count(shape) * shape.dtype_bytes + lora * FP32


def layer_bytes(shape: ModelShape, work: Workload) -> int:
    """One decoder layer in full, as its all-gather rebuilds it: base in its dtype, LoRA float32."""
    lora = lora_layer_count(shape, work.lora_rank, list(work.lora_targets))
    return layer_parameter_count(shape) * shape.dtype_bytes + lora * FP32


def shardable_bytes(shape: ModelShape, work: Workload) -> int:
    """What FSDP divides over the ranks: the base, LoRA weights, grads and AdamW's moments."""
    lora = lora_parameter_count(shape, work.lora_rank, list(work.lora_targets))
    return parameter_count(shape) * shape.dtype_bytes + lora * 4 * FP32


def sharded_items(shape: ModelShape, work: Workload, hw: Hardware) -> list[MemoryItem]:
    """data_parallel: fsdp over hw.gpus ranks (trainer/fsdp.py): fully_shard on every decoder
    layer, then on the root, both with torch's default reshard_after_forward. Each rank keeps
    1/N of every weight (rank 0 at most one row per weight more: ignored); a layer is gathered
    in full while it runs and resharded after its forward and its backward, while FSDP2 leaves
    the root unsharded from the first forward to the end of backward (lazy init sets the root's
    post-forward reshard off). Two layers: in backward the running one and the next, which
    FSDP2 prefetches; in forward, on a GPU, the copy-out of a layer's gather overlaps the next
    gather, so a third layer's buffer lives for a moment, before the peak (the activations are
    at their largest when backward starts), so it is left out. The optimizer runs over the
    shards: LoRA grads (reduce-scattered) and AdamW's moments are 1/N too; no DDP buckets."""
    n, d = hw.gpus, shape.dtype_bytes
    params = parameter_count(shape)
    lora = lora_parameter_count(shape, work.lora_rank, list(work.lora_targets))
    layer = layer_parameter_count(shape)
    head = (
        "embeddings (lm_head tied), final norm"
        if shape.tied_embeddings
        else "embeddings, lm_head, final norm"
    )
    return [
        MemoryItem(
            "base weights", -(-params * d // n),
            f"{params:,} params x {d} B ({shape.dtype}) / {n} ranks: this rank's shard, frozen",
        ),
        MemoryItem(
            "unsharded root", root_bytes(shape, work),
            f"{head} in full: FSDP2 keeps the root gathered from forward to the end of backward",
        ),
        MemoryItem(
            "gathered layers", 2 * layer_bytes(shape, work),
            f"2 x one decoder layer in full ({layer:,} params + its LoRA): the one running and "
            "the next, prefetched; each resharded after its forward and backward",
        ),
        MemoryItem(
            "LoRA weights", -(-lora * FP32 // n),
            f"{lora:,} params, rank {work.lora_rank}, float32 / {n} ranks",
        ),
        MemoryItem("LoRA grads", -(-lora * FP32 // n), f"float32, reduce-scattered / {n} ranks"),
        MemoryItem(
            "AdamW moments", -(-lora * 2 * FP32 // n),
            f"2 x float32 over the shards / {n} ranks, no master copy",
        ),
    ]  # fmt: skip


def step_items(shape: ModelShape, work: Workload) -> list[MemoryItem]:
    """What one micro-batch's forward and backward hold: the same on every rank, ddp or fsdp."""
    d = shape.dtype_bytes
    targets = list(work.lora_targets)
    b, s = work.micro_batch_size, work.max_sequence_tokens
    act = activation_bytes(shape, work.lora_rank, targets, b, s, work.gradient_checkpointing)
    logits_peak, _ = logits_bytes(shape, b, s)
    chunk = logits_chunk_positions(shape, b, s)
    kind = "with" if work.gradient_checkpointing else "without"
    items = [MemoryItem(
        "activations", act.saved,
        f"{kind} gradient checkpointing: {b} x {s} tokens kept for backward",
    )]  # fmt: skip
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
    return items


def available_bytes(hw: Hardware) -> int:
    """The trainer's share of a GPU: all of it, or what vLLM leaves when they share it."""
    if hw.colocate:
        return int(hw.gpu_memory * (1 - hw.gpu_memory_utilization))
    return hw.gpu_memory


def trainer_side(shape: ModelShape, work: Workload, hw: Hardware) -> Side:
    sharded = is_sharded(work, hw)
    weights = sharded_items if sharded else replica_items
    items = weights(shape, work, hw) + step_items(shape, work)
    available = available_bytes(hw)
    if sharded:
        ranks = (
            f"{hw.gpus} FSDP ranks (data_parallel: fsdp), one GPU each, the base sharded over "
            "them; the gathered items assume FSDP2's defaults as trainer/fsdp.py sets them"
        )
    else:
        ranks = f"{hw.gpus} data-parallel rank(s), one GPU each, each with a full base replica"
        if work.data_parallel == "fsdp":
            ranks += " (data_parallel: fsdp shards nothing in one process)"
    notes = (
        ranks,
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
