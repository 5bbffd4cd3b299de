"""GRPO's update of the LoRA weights over one step's training sequences.

The importance ratio is new policy over behaviour policy: the "old" logprobs are the ones the
inference backend reported for the tokens it sampled (vLLM's processed_logprobs, the local
policy's equivalent), so the ratio means the same thing on every pass. `updates_per_batch`
passes each accumulate the gradient over micro-batches and take one optimizer step; from the
second pass on the policy has moved away from the one that sampled, the ratio leaves 1 and
`clip_eps` bounds how far one batch can push it. With one pass the ratio is 1 up to the
trainer/backend numerical gap (reported as `logprob_mismatch`). The reference for the KL term
is the same model with its adapter disabled: no second copy.

Data-parallel (trainer.distributed): every rank gets the step's whole `sequences`, trains on its
share, and weighs each micro-batch by the global counts times the world size, so DDP's mean of
the ranks' gradients is the gradient one process would take over all of them.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from trainer.batch import Batch, TrainSequence, collate
from trainer.config import TrainConfig
from trainer.distributed import SINGLE, DistContext, shard, sum_figures, trainable, unwrap
from trainer.loss import policy_loss, token_logprobs


@dataclass
class UpdateResult:
    loss: float  # the first pass's: the loss on the batch as sampled
    kl_to_ref: float | None  # None when not measured (kl_coef 0: no reference forward pass)
    grad_norm: float  # the first pass's, before clipping
    entropy: float  # the first pass's
    clip_fraction: float  # share of generated tokens clipped, mean over the passes
    logprob_mismatch: float  # mean |trainer - backend| logprob before any pass moved the policy
    tokens: int  # tokens forwarded, all passes together
    passes: int  # optimizer steps taken (fewer than asked if a pass went non-finite)


@dataclass
class PassFigures:
    loss: float = 0.0
    kl_to_ref: float | None = None
    grad_norm: float = 0.0
    entropy: float = 0.0
    clip_fraction: float = 0.0
    logprob_gap: float = 0.0
    tokens: int = 0


def forward_logprobs(
    model: Any, batch: Batch, temperature: float, *, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-> (logprobs, entropy), both (batch, seq - 1), for tokens 1.. of the batch; the entropy
    (a metric, no gradient) only when asked, else None."""
    logits = model(input_ids=batch.ids, attention_mask=batch.attention).logits  # (b, s, v)
    # position t predicts token t+1; the last position's logits are skipped, not sliced off
    return token_logprobs(logits, batch.ids[:, 1:], temperature, entropy=entropy)  # (b, s-1)


def reference_logprobs(model: Any, batch: Batch, temperature: float) -> torch.Tensor:
    """(batch, seq - 1) logprobs of the reference: the same model with its adapter disabled,
    no gradient, no DDP (nothing to reduce) and no entropy (nobody reads it)."""
    inner = unwrap(model)
    base = getattr(inner, "disable_adapter", nullcontext)
    with torch.no_grad(), base():
        logprobs, _ = forward_logprobs(inner, batch, temperature, entropy=False)  # (b, s-1)
    return logprobs


def chunk_weight(loss_type: str, size: int, total: int, batch: Batch, generated: int) -> float:
    """A micro-batch's share of the step's loss, so accumulated gradients equal one big batch:
    by sequences for the per-sequence losses (grpo, dr_grpo), by tokens for dapo."""
    if loss_type == "dapo":
        return float(batch.mask.sum()) / max(generated, 1)
    return size / max(total, 1)


def micro_batches(
    sequences: list[TrainSequence], config: TrainConfig, pad_id: int, ctx: DistContext = SINGLE
) -> list[tuple[Batch, float]]:
    """This rank's micro-batches of the step's `sequences`, each with its share of the loss
    (over the whole step's counts, times the world size: DDP averages over ranks); collated
    once for all passes. A rank with fewer micro-batches than rank 0 (or none) is topped up
    with all-masked ones of share 0: every rank's forwards and backwards join the collectives
    (FSDP's all-gathers, the gradient reduction)."""
    generated = sum(sum(s.mask) for s in sequences)
    size = config.micro_batch_size
    mine = shard(sequences, ctx)
    batches = []
    for start in range(0, len(mine), size):
        chunk = mine[start : start + size]
        batch = collate(chunk, pad_id, config.policy.device)
        share = chunk_weight(config.loss_type, len(chunk), len(sequences), batch, generated)
        batches.append((batch, share * ctx.world_size))
    # Every rank runs as many micro-batches as rank 0, which has the most: under FSDP each
    # forward is a collective (a rank with fewer would leave the others waiting). A stand-in
    # changes no gradient (share 0).
    rounds = max(1, math.ceil(math.ceil(len(sequences) / ctx.world_size) / size))
    stand_in = TrainSequence([pad_id, pad_id], [0, 0], [0.0, 0.0], 0.0)
    padding = [(collate([stand_in], pad_id, config.policy.device), 0.0)] * (rounds - len(batches))
    return batches + padding


def accumulate(model: Any, batch: Batch, share: float, config: TrainConfig) -> PassFigures:
    """Forward and backward one micro-batch; its figures, already weighted by `share`."""
    temperature = config.policy.temperature
    logprobs, entropy = forward_logprobs(model, batch, temperature)  # (b, s-1) each
    assert entropy is not None  # asked for: forward_logprobs' default
    ref = reference_logprobs(model, batch, temperature) if config.kl_coef > 0 else None
    loss, metrics = policy_loss(
        logprobs,
        batch.behaviour,
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
    gap = ((logprobs.detach() - batch.behaviour).abs() * mask).sum()  # ()
    return PassFigures(
        loss=metrics["loss"] * share,
        kl_to_ref=metrics["kl_to_ref"] * share if "kl_to_ref" in metrics else None,
        entropy=float((entropy * mask).sum()) / n * share,
        clip_fraction=metrics["clip_fraction"] * share,
        logprob_gap=float(gap) / n * share,
        tokens=batch.tokens if share else 0,  # a stand-in batch forwards no real tokens
    )


def one_pass(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[Batch, float]],
    config: TrainConfig,
    ctx: DistContext = SINGLE,
) -> tuple[PassFigures, bool]:
    """Accumulate over every micro-batch (DDP reduces the gradients in the last backward), then
    one optimizer step if the figures are finite. -> (figures, whether the step was taken)."""
    optimizer.zero_grad(set_to_none=True)
    total = PassFigures()
    for index, (batch, share) in enumerate(batches):
        last = index == len(batches) - 1
        with model.no_sync() if ctx.enabled and not last else nullcontext():
            part = accumulate(model, batch, share, config)
        total.loss += part.loss
        total.entropy += part.entropy
        total.clip_fraction += part.clip_fraction
        total.logprob_gap += part.logprob_gap
        total.tokens += part.tokens
        if part.kl_to_ref is not None:
            total.kl_to_ref = (total.kl_to_ref or 0.0) + part.kl_to_ref
    total = reduced(total, ctx)
    params = trainable(model)
    total.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    stepped = math.isfinite(total.loss) and math.isfinite(total.grad_norm)
    if stepped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, stepped


def reduced(figures: PassFigures, ctx: DistContext) -> PassFigures:
    """The whole step's figures: each rank's are weighted by world_size times its share, so
    their sum over ranks, over world_size, is the figure one process would report (and every
    rank gets it, so all take the same decision on a non-finite loss)."""
    if not ctx.enabled:
        return figures
    kl = figures.kl_to_ref
    fields = [figures.loss, kl or 0.0, figures.entropy, figures.clip_fraction,
              figures.logprob_gap]  # fmt: skip
    *sums, tokens = sum_figures([*fields, float(figures.tokens)], ctx)
    loss, kl_sum, entropy, clip, gap = (v / ctx.world_size for v in sums)
    return PassFigures(
        loss=loss,
        kl_to_ref=None if kl is None else kl_sum,
        entropy=entropy,
        clip_fraction=clip,
        logprob_gap=gap,
        tokens=int(tokens),
    )


def grpo_update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sequences: list[TrainSequence],
    config: TrainConfig,
    pad_id: int,
    ctx: DistContext = SINGLE,
) -> UpdateResult:
    """`config.updates_per_batch` optimizer steps over `sequences` (the whole step's: each rank
    trains on its share of them); the scheduler moves once per call (its warm-up counts
    training steps, not passes). `model` is DDP-wrapped when ctx spans several ranks."""
    model.train()
    batches = micro_batches(sequences, config, pad_id, ctx)
    passes: list[PassFigures] = []
    for _ in range(config.updates_per_batch):
        figures, stepped = one_pass(model, optimizer, batches, config, ctx)
        passes.append(figures)
        if not stepped:  # a non-finite loss or gradient: the caller stops the run on it
            break
    taken = len(passes) - (0 if stepped else 1)
    if taken:
        scheduler.step()
    first = passes[0]
    return UpdateResult(
        # a pass that went non-finite reports its loss, so that train_step stops the run
        loss=first.loss if stepped else passes[-1].loss,
        kl_to_ref=first.kl_to_ref,
        grad_norm=first.grad_norm,
        entropy=first.entropy,
        clip_fraction=sum(p.clip_fraction for p in passes) / len(passes),
        logprob_mismatch=first.logprob_gap,
        tokens=sum(p.tokens for p in passes),
        passes=taken,
    )
