"""One GRPO update of the LoRA weights over a list of training sequences.

The batch is split into micro-batches whose gradients accumulate; one optimizer step follows.
With one update per rollout batch the sampling policy is the current one, so the ratio's
"old" logprobs are the current ones detached (exactly on-policy, as TRL does without vLLM).
The reference for the KL term is the same model with its adapter disabled: no second copy.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from trainer.batch import Batch, TrainSequence, collate
from trainer.config import TrainConfig
from trainer.loss import policy_loss, token_entropy, token_logprobs


@dataclass
class UpdateResult:
    loss: float
    kl_to_ref: float | None  # None when not measured (kl_coef 0: no reference forward pass)
    grad_norm: float
    entropy: float
    clip_fraction: float
    logprob_mismatch: float  # mean |trainer - backend| logprob on generated tokens
    tokens: int


def forward_logprobs(
    model: Any, batch: Batch, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (logprobs, entropy), both (batch, seq - 1), for tokens 1.. of the batch."""
    logits = model(input_ids=batch.ids, attention_mask=batch.attention).logits  # (b, s, v)
    logits = logits[:, :-1]  # (b, s-1, v): position t predicts token t+1
    logprobs = token_logprobs(logits, batch.ids[:, 1:], temperature)  # (b, s-1)
    with torch.no_grad():
        entropy = token_entropy(logits.detach(), temperature)  # (b, s-1)
    return logprobs, entropy


def chunk_weight(loss_type: str, size: int, total: int, batch: Batch, generated: int) -> float:
    """A micro-batch's share of the step's loss, so accumulated gradients equal one big batch:
    by sequences for the per-sequence losses (grpo, dr_grpo), by tokens for dapo."""
    if loss_type == "dapo":
        return float(batch.mask.sum()) / max(generated, 1)
    return size / max(total, 1)


def grpo_update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sequences: list[TrainSequence],
    config: TrainConfig,
    pad_id: int,
) -> UpdateResult:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    generated = sum(sum(s.mask) for s in sequences)
    totals = {"loss": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "gap": 0.0}
    kl_to_ref: float | None = None  # stays None unless a micro-batch measured it
    tokens = 0
    size = config.micro_batch_size
    for start in range(0, len(sequences), size):
        chunk = sequences[start : start + size]
        batch = collate(chunk, pad_id, config.policy.device)
        share = chunk_weight(config.loss_type, len(chunk), len(sequences), batch, generated)
        logprobs, entropy = forward_logprobs(model, batch, config.policy.temperature)
        ref = None
        if config.kl_coef > 0:
            base = getattr(model, "disable_adapter", nullcontext)
            with torch.no_grad(), base():
                ref, _ = forward_logprobs(model, batch, config.policy.temperature)
        loss, metrics = policy_loss(
            logprobs,
            logprobs.detach(),
            batch.advantages,
            batch.mask,
            ref_logprobs=ref,
            clip_eps=config.clip_eps,
            kl_coef=config.kl_coef,
            loss_type=config.loss_type,
            max_tokens=config.max_sequence_tokens,
        )
        (loss * share).backward()
        mask = batch.mask.float()  # (b, s-1)
        n = float(mask.sum().clamp(min=1.0))
        totals["loss"] += metrics["loss"] * share
        if "kl_to_ref" in metrics:
            kl_to_ref = (kl_to_ref or 0.0) + metrics["kl_to_ref"] * share
        totals["clip_fraction"] += metrics["clip_fraction"] * share
        totals["entropy"] += float((entropy * mask).sum()) / n * share
        gap = ((logprobs.detach() - batch.behaviour).abs() * mask).sum()  # ()
        totals["gap"] += float(gap) / n * share
        tokens += batch.tokens
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    if math.isfinite(totals["loss"]) and math.isfinite(grad_norm):
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return UpdateResult(
        loss=totals["loss"],
        kl_to_ref=kl_to_ref,
        grad_norm=grad_norm,
        entropy=totals["entropy"],
        clip_fraction=totals["clip_fraction"],
        logprob_mismatch=totals["gap"],
        tokens=tokens,
    )
