"""The loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.loss import group_advantages, policy_loss, token_logprobs


def test_group_advantages_centre_and_optionally_scale() -> None:
    assert group_advantages([1.0, 0.0, 0.0, 1.0]) == [0.5, -0.5, -0.5, 0.5]
    assert group_advantages([1.0, 0.0, 0.0, 1.0], scale=True) == [1.0, -1.0, -1.0, 1.0]
    assert group_advantages([0.3, 0.3, 0.3]) == [0.0, 0.0, 0.0]
    assert group_advantages([0.3, 0.3], scale=True) == [0.0, 0.0]


def tensors() -> tuple[torch.Tensor, ...]:
    # Two sequences; the first has 2 generated tokens, the second 1 (then padding).
    logprobs = torch.tensor([[math.log(0.5), math.log(0.3)], [math.log(0.9), 0.0]])
    old = torch.tensor([[math.log(0.25), math.log(0.3)], [math.log(0.9), 0.0]])
    advantages = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    return logprobs, old, advantages, mask


def test_grpo_clips_the_ratio_and_averages_per_sequence() -> None:
    logprobs, old, advantages, mask = tensors()
    loss, metrics = policy_loss(logprobs, old, advantages, mask, clip_eps=0.2)
    # seq 0: ratios 2.0 (clipped to 1.2) and 1.0 with A=1 -> per-token -1.2, -1.0 -> mean -1.1
    # seq 1: ratio 1.0 with A=-2 -> 2.0
    assert float(loss) == pytest.approx((-1.1 + 2.0) / 2)
    assert metrics["clip_fraction"] == pytest.approx(1 / 3)
    assert "kl_to_ref" not in metrics  # no reference given: not measured, so not reported as 0


def test_kl_is_measured_whenever_a_reference_is_given_even_without_a_penalty() -> None:
    logprobs, old, advantages, mask = tensors()
    plain, _ = policy_loss(logprobs, old, advantages, mask)
    loss, metrics = policy_loss(logprobs, old, advantages, mask, ref_logprobs=old, kl_coef=0.0)
    assert float(loss) == pytest.approx(float(plain))  # measured, but not in the loss
    assert math.isfinite(metrics["kl_to_ref"]) and metrics["kl_to_ref"] > 0


def test_dapo_and_dr_grpo_normalise_differently() -> None:
    logprobs, old, advantages, mask = tensors()
    dapo, _ = policy_loss(logprobs, old, advantages, mask, loss_type="dapo")
    assert float(dapo) == pytest.approx((-1.2 - 1.0 + 2.0) / 3)
    dr, _ = policy_loss(logprobs, old, advantages, mask, loss_type="dr_grpo", max_tokens=4)
    assert float(dr) == pytest.approx(((-2.2) + 2.0) / 2 / 4)


def test_kl_penalty_uses_the_k3_estimator() -> None:
    logprobs = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    advantages = torch.tensor([0.0])
    mask = torch.tensor([[1]])
    loss, metrics = policy_loss(
        logprobs, logprobs.clone(), advantages, mask, ref_logprobs=ref, kl_coef=0.1
    )
    # delta = log(0.25/0.5) = -log 2: k3 = 0.5 + log 2 - 1
    k3 = 0.5 + math.log(2) - 1
    assert metrics["kl_to_ref"] == pytest.approx(k3)
    assert float(loss) == pytest.approx(0.1 * k3)


def test_the_gradient_pushes_up_tokens_with_positive_advantage() -> None:
    logits = torch.zeros(1, 1, 4, requires_grad=True)
    ids = torch.tensor([[2]])
    logprobs, _ = token_logprobs(logits, ids, temperature=1.0)
    assert float(logprobs.detach()) == pytest.approx(math.log(0.25))
    loss, _ = policy_loss(logprobs, logprobs.detach(), torch.tensor([1.0]), torch.tensor([[1]]))
    loss.backward()
    assert logits.grad is not None
    assert float(logits.grad[0, 0, 2]) < 0 < float(logits.grad[0, 0, 0])  # descent raises id 2
