"""Gradient accumulation over micro-batches gives the gradient of one big batch."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from trainer.batch import TrainSequence
from trainer.config import TrainConfig
from trainer.update import UpdateResult, grpo_update


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16)
        self.adapter_on = True

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        logits = self.head(self.embed(input_ids))  # (b, s, vocab)
        if not self.adapter_on:  # the "base model": a different distribution, so KL > 0
            logits = logits * 0.5
        return SimpleNamespace(logits=logits)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:  # as peft's PeftModel offers
        self.adapter_on = False
        try:
            yield
        finally:
            self.adapter_on = True


SEQUENCES = [
    TrainSequence([1, 2, 3, 4, 5], [0, 0, 1, 1, 1], [0.0] * 5, 0.5),
    TrainSequence([1, 6, 7], [0, 1, 1], [0.0] * 3, -0.5),
    TrainSequence([2, 3, 9, 9, 9, 9, 4], [0, 0, 1, 1, 1, 1, 1], [0.0] * 7, 1.0),
]


def update(**changes: Any) -> UpdateResult:
    model = TinyLM()
    config = TrainConfig.model_validate({"base_model": "m", **changes})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return grpo_update(model, optimizer, scheduler, SEQUENCES, config, pad_id=0)


def gradient(loss_type: str, micro: int) -> torch.Tensor:
    model = TinyLM()
    config = TrainConfig.model_validate(
        {"base_model": "m", "loss_type": loss_type, "micro_batch_size": micro}
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    captured: list[torch.Tensor] = []
    original = optimizer.step

    def step(*args: Any, **kwargs: Any) -> Any:
        captured.append(model.head.weight.grad.detach().clone())  # type: ignore[union-attr]
        return original(*args, **kwargs)

    optimizer.step = step  # type: ignore[method-assign]
    config = config.model_copy(update={"max_grad_norm": 1e9})
    grpo_update(model, optimizer, scheduler, SEQUENCES, config, pad_id=0)
    return captured[0]


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_add_up_to_the_full_batch(loss_type: str) -> None:
    full = gradient(loss_type, micro=8)
    assert float(full.abs().sum()) > 0
    assert torch.allclose(gradient(loss_type, micro=1), full, atol=1e-6)


def test_without_a_kl_penalty_kl_to_ref_is_not_measured() -> None:
    assert update(kl_coef=0.0).kl_to_ref is None  # not 0.0: no reference pass ran


def test_with_a_kl_penalty_kl_to_ref_is_measured_over_every_micro_batch() -> None:
    # dapo weighs micro-batches by tokens, so the per-token KL must not depend on the split
    whole = update(kl_coef=0.1, loss_type="dapo", micro_batch_size=8).kl_to_ref
    assert whole is not None and math.isfinite(whole) and whole > 0
    split = update(kl_coef=0.1, loss_type="dapo", micro_batch_size=1).kl_to_ref
    assert split == pytest.approx(whole)
