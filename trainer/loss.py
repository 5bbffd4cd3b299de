"""GRPO's maths as small pure functions: group-relative advantages, the clipped policy loss, and
the tokens' logprobs and entropy from the logits, a chunk of positions at a time.

Tokens are laid out as padded batches: `(batch, seq)` tensors with `mask` 1 on the tokens the
model generated (the only ones that carry loss) and 0 on prompt, tool output and padding.
"""

from __future__ import annotations

from typing import Any

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


# Float32 elements per chunk of the vocabulary work (64 MiB each): logprobs and entropy are
# computed a chunk of positions at a time, so their float32 temporaries stay this small however
# long the sequence and large the vocabulary (one full float32 copy of 2 x 8192 tokens of
# Qwen2.5's logits is 9.3 GiB), in ~150 chunks there: few enough that the Python loop's
# launches stay a small share of the step, each chunk's kernels large enough to fill a GPU.
CHUNK_ELEMENTS = 2**24


def chunk_spans(logits: torch.Tensor, positions: int, budget: int) -> list[slice]:
    """Slices over the first `positions` positions of logits (batch, seq, vocab), each covering
    at most `budget` elements (one position at least)."""
    batch, _, vocab = logits.shape
    step = max(1, budget // max(batch * vocab, 1))
    return [slice(start, min(start + step, positions)) for start in range(0, positions, step)]


def scaled_float(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(batch, c, vocab) -> a fresh float32 logits / temperature: one copy, however the dtype
    (`.float()` of a float32 tensor is the tensor itself, so dividing in place needs copy=True)."""
    return logits.to(torch.float32, copy=True).div_(temperature)  # (batch, c, vocab)


def chunk_logprobs(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float, entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk, no autograd: logits (batch, c, vocab) predicting ids (batch, c) ->
    (logprobs, entropy or None), each (batch, c) float32. At most two float32 chunks live."""
    logp = torch.log_softmax(scaled_float(logits, temperature), dim=2)  # (batch, c, vocab)
    picked = logp.gather(2, ids.unsqueeze(2)).squeeze(2)  # (batch, c)
    if not entropy:
        return picked, None
    return picked, -logp.exp().mul_(logp).sum(dim=2)  # (batch, c)


def chunk_logprob_grad(
    logits: torch.Tensor, ids: torch.Tensor, grad: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The gradient of one chunk's logprobs through to its logits: d log p(y) / d z_j is
    (1[j = y] - p_j) / temperature. logits (batch, c, vocab), ids and the upstream grad
    (batch, c) -> (batch, c, vocab) float32."""
    scale = (grad.float() / temperature).unsqueeze(2)  # (batch, c, 1)
    probs = torch.softmax(scaled_float(logits, temperature), dim=2)  # (batch, c, vocab)
    return probs.mul_(-scale).scatter_add_(2, ids.unsqueeze(2), scale)  # (batch, c, vocab)


class TokenLogprobs(torch.autograd.Function):
    """Logprobs of `ids` under softmax(logits / temperature), a chunk of positions at a time.

    Autograd keeps only the logits, in the model's dtype, and backward recomputes each
    chunk's softmax: no full-vocabulary float32 tensor is ever kept or built (the plain
    log-sum-exp keeps a float32 copy of all the logits, and the entropy took three more).
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        ids: torch.Tensor,
        temperature: float,
        entropy: bool,
        budget: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logprobs = logits.new_empty(ids.shape, dtype=torch.float32)  # (batch, n)
        entropies = logits.new_empty(ids.shape, dtype=torch.float32) if entropy else None
        for span in chunk_spans(logits, ids.shape[1], budget):
            picked, spread = chunk_logprobs(logits[:, span], ids[:, span], temperature, entropy)
            logprobs[:, span] = picked  # (batch, c)
            if entropies is not None and spread is not None:
                entropies[:, span] = spread  # (batch, c)
        ctx.save_for_backward(logits, ids)
        ctx.temperature, ctx.budget = temperature, budget
        if entropies is not None:
            ctx.mark_non_differentiable(entropies)  # a metric: never trained on
        return logprobs, entropies

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[torch.Tensor | None, ...]:
        grad_logprobs = grads[0]  # (batch, n); the entropy's grad is unused
        logits, ids = ctx.saved_tensors
        positions = ids.shape[1]
        grad = torch.empty_like(logits)  # (batch, seq, vocab), the model's dtype
        grad[:, positions:] = 0  # positions past the targets (the last one) predict nothing
        for span in chunk_spans(logits, positions, ctx.budget):
            grad[:, span] = chunk_logprob_grad(
                logits[:, span], ids[:, span], grad_logprobs[:, span], ctx.temperature
            )  # (batch, c, vocab)
        return grad, None, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    ids: torch.Tensor,
    temperature: float,
    *,
    entropy: bool = False,
    budget: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits (batch, seq, vocab), position t predicting ids[:, t], ids (batch, n), n <= seq
    -> (logprobs, entropy), each (batch, n) float32, under the sampling distribution
    (logits / temperature), as the policy sampled them. Positions past n (the last one,
    which predicts nothing) are ignored rather than sliced off: the slice's backward would
    build another full copy of the logits. The entropy (no gradient) only when asked, else
    None; `budget` bounds the elements of each chunk."""
    logprobs, entropies = TokenLogprobs.apply(logits, ids, temperature, entropy, budget)
    return logprobs, entropies
