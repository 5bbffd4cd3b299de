"""The model side of `toolgym plan`: a decoder's shape from its config, and the bytes each
part of training takes, as the code in this repository takes them (trainer/plan.py adds them up).

Checked in tests/trainer/test_plan.py: parameter counts against models built from the same
configs, LoRA counts against PEFT's, and saved and peak bytes against measurements of the
trainer's own forward and backward on small models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainer.errors import TrainerError
from trainer.loss import CHUNK_ELEMENTS

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
FP32 = 4


class PlanError(TrainerError):
    """The model or the request cannot be planned (names what and what to do)."""


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer of the Llama family (Llama, Qwen2/3, Mistral), by its sizes."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    dtype: str  # the checkpoint's: what the trainer loads
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: an RMSNorm over head_dim on q and on k
    max_position_embeddings: int = 0

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer a LoRA target can name, per decoder layer."""
        h, q, kv, i = self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
# Families whose layers are the ones counted here (tests build each and compare); another
# family's norms, MLP or embeddings differ, and a confident wrong figure is worse than none.
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def shape_from_config(config: Any) -> ModelShape:
    """The shape of a transformers config (AutoConfig's object); refuses what it cannot count."""
    config = getattr(config, "text_config", None) or config  # multimodal wrappers
    if any(getattr(config, key, None) for key in MOE_KEYS):
        raise PlanError(f"{config.model_type}: mixture-of-experts models are not planned yet")
    if config.model_type not in FAMILIES:
        raise PlanError(
            f"model_type {config.model_type}: only {', '.join(FAMILIES)} models are planned"
        )
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    raw = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    dtype = str(raw).removeprefix("torch.")
    if dtype not in DTYPE_BYTES:
        raise PlanError(f"dtype {dtype}: only float32, float16 and bfloat16 are planned")
    kind = config.model_type
    attention_bias = bool(getattr(config, "attention_bias", False))
    return ModelShape(
        model_type=kind,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        dtype=dtype,
        qkv_bias=kind == "qwen2" or attention_bias,  # Qwen2 always biases q, k and v
        o_bias=attention_bias,
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
        qk_norm=kind == "qwen3",
        max_position_embeddings=getattr(config, "max_position_embeddings", 0) or 0,
    )


def layer_parameter_count(shape: ModelShape) -> int:
    """One decoder layer's parameters: the unit trainer/fsdp.py shards and gathers."""
    h, q, kv, i = shape.hidden_size, shape.q_dim, shape.kv_dim, shape.intermediate_size
    attention = h * q + 2 * h * kv + q * h
    attention += (q + 2 * kv) * shape.qkv_bias + h * shape.o_bias
    attention += 2 * shape.head_dim * shape.qk_norm
    mlp = 3 * h * i + (2 * i + h) * shape.mlp_bias
    return attention + mlp + 2 * h  # two RMSNorms


def root_parameter_count(shape: ModelShape) -> int:
    """The parameters outside the decoder layers (FSDP's root unit): the embeddings, lm_head
    unless tied to them, and the final norm."""
    embeddings = shape.vocab_size * shape.hidden_size * (1 if shape.tied_embeddings else 2)
    return embeddings + shape.hidden_size


def parameter_count(shape: ModelShape) -> int:
    """Every parameter of the model, as `sum(p.numel() for p in model.parameters())` counts
    them (tied embeddings once)."""
    return shape.num_layers * layer_parameter_count(shape) + root_parameter_count(shape)


def lora_parameter_count(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """PEFT's trainable count: rank x (in + out) per targeted linear layer."""
    dims = shape.linear_dims()
    unknown = [t for t in targets if t not in dims and t not in ("lm_head", "embed_tokens")]
    if unknown:
        known = ", ".join([*dims, "lm_head", "embed_tokens"])
        raise PlanError(
            f"lora.target_modules: {', '.join(unknown)} is no module of a {shape.model_type} "
            f"model (known: {known})"
        )
    return shape.num_layers * lora_layer_count(shape, rank, targets) + lora_root_count(
        shape, rank, targets
    )


def lora_layer_count(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """The LoRA parameters inside one decoder layer (gathered with it under FSDP)."""
    dims = shape.linear_dims()
    return sum(rank * sum(dims[t]) for t in targets if t in dims)


def lora_root_count(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """The LoRA parameters on lm_head and embed_tokens: FSDP's root unit."""
    edges = rank * (shape.vocab_size + shape.hidden_size)
    return edges * (("lm_head" in targets) + ("embed_tokens" in targets))


@dataclass(frozen=True)
class Activations:
    """Bytes of one micro-batch's activations. `saved`: kept by autograd from forward to
    backward; `recompute`: one layer rebuilt in backward (checkpointing only); `masks`: the
    padded batch's attention masks SDPA keeps."""

    saved: int
    recompute: int
    masks: int


def layer_bytes_per_token(shape: ModelShape, rank: int, targets: list[str], padded: bool) -> int:
    """What autograd saves per token in one decoder layer, base frozen, LoRA on `targets`.

    Measured term by term with saved_tensors_hooks on transformers' Qwen2 with SDPA:
    - each RMSNorm computes in float32 and keeps its float32 input: 4h (+ 4 for the rsqrt);
    - SDPA keeps q, k, v, its output (model dtype) and a float32 log-sum-exp per head; with a
      padding mask k and v are repeated to every head first (no GQA kernel with a mask);
    - the MLP keeps the gate output (for SiLU), SiLU's and up's outputs (for the product);
    - each LoRA layer keeps its input cast to float32 (a copy per module when the model is
      16-bit; in float32 the input itself, shared with whatever else keeps it) and A's output.
    """
    d, h, q, kv, i = (
        shape.dtype_bytes,
        shape.hidden_size,
        shape.q_dim,
        shape.kv_dim,
        shape.intermediate_size,
    )
    keys = q if padded else kv
    total = 2 * (FP32 * h + FP32)
    total += (2 * q + 2 * keys) * d + FP32 * shape.num_heads
    total += 3 * i * d
    dims = shape.linear_dims()
    layer_targets = [t for t in targets if t in dims]
    total += FP32 * rank * len(layer_targets)
    if d < FP32:
        total += sum(FP32 * dims[t][0] for t in layer_targets)
    else:
        # float32: q/k/v share the normed input, gate/up theirs; o's input is SDPA's output
        # (kept already); down's input, the MLP product, is kept by nobody else.
        total += FP32 * h * any(t in layer_targets for t in ("q_proj", "k_proj", "v_proj"))
        total += FP32 * h * any(t in layer_targets for t in ("gate_proj", "up_proj"))
        total += FP32 * i * ("down_proj" in layer_targets)
    return total


def activation_bytes(
    shape: ModelShape, rank: int, targets: list[str], batch: int, seq: int, checkpointing: bool
) -> Activations:
    """One micro-batch of `batch` sequences padded to `seq` tokens. A micro-batch of several
    is assumed padded (sequences differ in length): SDPA then keeps the mask, cast to the
    model dtype, once per layer. Without checkpointing every layer keeps its activations;
    with it, each layer keeps only its input and one layer is recomputed at a time."""
    tokens = batch * seq
    padded = batch > 1
    layer = layer_bytes_per_token(shape, rank, targets, padded) * tokens
    mask = batch * seq * seq * shape.dtype_bytes * padded
    final_norm = (FP32 * shape.hidden_size + FP32) * tokens
    if not checkpointing:
        return Activations(shape.num_layers * layer + final_norm, 0, shape.num_layers * mask)
    inputs = shape.num_layers * shape.hidden_size * shape.dtype_bytes * tokens
    return Activations(inputs + final_norm, layer + mask, 0)  # the layer rebuilt with its mask


def logits_chunk_positions(shape: ModelShape, batch: int, seq: int) -> int:
    """Sequence positions per chunk of the logprobs' float32 work (trainer/loss.py chunk_spans)."""
    return min(max(1, CHUNK_ELEMENTS // (batch * shape.vocab_size)), max(seq - 1, 1))


def logits_bytes(shape: ModelShape, batch: int, seq: int) -> tuple[int, int]:
    """(peak, saved) bytes of the logits of one micro-batch (trainer/loss.py token_logprobs):
    autograd keeps the model's logits (dtype); at the start of backward their gradient (dtype)
    is built beside them, and a chunk of positions at a time is worked on in float32 (two
    chunk-sized float32 tensors at once, forward and backward alike)."""
    elements = batch * seq * shape.vocab_size
    chunk = batch * logits_chunk_positions(shape, batch, seq) * shape.vocab_size
    return 2 * elements * shape.dtype_bytes + 2 * FP32 * chunk, elements * shape.dtype_bytes


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int = 2, tensor_parallel: int = 1) -> int:
    """K and V of every layer for one token on one GPU: KV heads split over tensor-parallel
    ranks (replicated when there are fewer heads than ranks)."""
    heads = math.ceil(shape.num_kv_heads / tensor_parallel)
    return 2 * shape.num_layers * heads * shape.head_dim * dtype_bytes
