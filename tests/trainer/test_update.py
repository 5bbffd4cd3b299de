"""Gradient accumulation over micro-batches gives the gradient of one big batch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from trainer.batch import TrainSequence
from trainer.config import TrainConfig
from trainer.update import grpo_update


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return SimpleNamespace(logits=self.head(self.embed(input_ids)))  # (b, s, vocab)


SEQUENCES = [
    TrainSequence([1, 2, 3, 4, 5], [0, 0, 1, 1, 1], [0.0] * 5, 0.5),
    TrainSequence([1, 6, 7], [0, 1, 1], [0.0] * 3, -0.5),
    TrainSequence([2, 3, 9, 9, 9, 9, 4], [0, 0, 1, 1, 1, 1, 1], [0.0] * 7, 1.0),
]


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
