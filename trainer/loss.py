"""GRPO's maths as small pure functions: group-relative advantages and the clipped policy loss.

Tokens are laid out as padded batches: `(batch, seq)` tensors with `mask` 1 on the tokens the
model generated (the only ones that carry loss) and 0 on prompt, tool output and padding.
"""

from __future__ import annotations

import torch

from trainer.config import LossType


def group_advantages(rewards: list[float], *, scale: bool = False) -> list[float]:
    """Reward minus the group's mean (optionally over its std). Equal rewards give zeros."""
    values = torch.tensor(rewards, dtype=torch.float64)  # (group,)
    centred = values - values.mean()  # (group,)
    if scale:
        std = values.std(unbiased=False)
        centred = centred / std if std > 0 else torch.zeros_like(centred)
    return [float(a) for a in centred]


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    kl_coef: float = 0.0,
    loss_type: LossType = "grpo",
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate with an optional KL penalty to the reference.

    The ratio is exp(logprobs - old_logprobs), where old_logprobs are the behaviour policy's:
    the logprobs the sampling backend reported for these tokens.
    logprobs, old_logprobs, ref_logprobs, mask: (batch, seq); advantages: (batch,).
    grpo: mean over each sequence's tokens, then over sequences. dr_grpo: sum over tokens
    divided by a constant (`max_tokens`), so long answers are not favoured. dapo: mean over
    every generated token of the batch.

    metrics carries "kl_to_ref" only when `ref_logprobs` is given: without a reference the KL
    is not measured, and a 0.0 would read as "the policy has not moved".
    """
    mask = mask.to(logprobs.dtype)  # (batch, seq)
    ratio = torch.exp(logprobs - old_logprobs)  # (batch, seq)
    adv = advantages.unsqueeze(1)  # (batch, 1)
    unclipped = ratio * adv  # (batch, seq)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv  # (batch, seq)
    per_token = -torch.minimum(unclipped, clipped)  # (batch, seq)
    kl = None
    if ref_logprobs is not None:
        # k3 estimator of KL(policy || ref): unbiased, always >= 0.
        delta = ref_logprobs - logprobs  # (batch, seq)
        kl = torch.exp(delta) - delta - 1.0  # (batch, seq)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl
    loss = reduce_tokens(per_token, mask, loss_type, max_tokens)  # ()
    tokens = mask.sum().clamp(min=1.0)  # ()
    clipped_share = (((ratio - 1.0).abs() > clip_eps).to(mask.dtype) * mask).sum() / tokens
    metrics = {
        "loss": float(loss.detach()),
        "clip_fraction": float(clipped_share),
        "ratio_mean": float((ratio.detach() * mask).sum() / tokens),
    }
    if kl is not None:
        metrics["kl_to_ref"] = float((kl.detach() * mask).sum() / tokens)
    return loss, metrics


def reduce_tokens(
    per_token: torch.Tensor, mask: torch.Tensor, loss_type: LossType, max_tokens: int | None
) -> torch.Tensor:
    """per_token, mask: (batch, seq) -> a scalar by the loss variant's normalisation."""
    if loss_type == "grpo":
        lengths = mask.sum(dim=1).clamp(min=1.0)  # (batch,)
        return ((per_token * mask).sum(dim=1) / lengths).mean()
    if loss_type == "dr_grpo":
        constant = float(max_tokens or mask.shape[1])
        return (per_token * mask).sum(dim=1).mean() / constant
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)  # dapo


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits: (batch, seq, vocab) predicting ids: (batch, seq) -> (batch, seq) logprobs under
    the sampling distribution (logits / temperature), as the policy sampled them."""
    scaled = logits.float() / temperature  # (batch, seq, vocab)
    picked = torch.gather(scaled, 2, ids.unsqueeze(2)).squeeze(2)  # (batch, seq)
    return picked - torch.logsumexp(scaled, dim=2)  # (batch, seq)


def token_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(batch, seq, vocab) -> (batch, seq) entropy of the sampling distribution."""
    logp = torch.log_softmax(logits.float() / temperature, dim=2)  # (batch, seq, vocab)
    return -(logp.exp() * logp).sum(dim=2)  # (batch, seq)
