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


def on_policy_sequences(model: TinyLM) -> list[TrainSequence]:
    """SEQUENCES with the behaviour logprobs the model itself gives them: what a backend
    serving exactly the trainer's weights reports."""
    from trainer.batch import collate
    from trainer.update import forward_logprobs

    batch = collate(SEQUENCES, pad_id=0)
    with torch.no_grad():
        logprobs, _ = forward_logprobs(model, batch, temperature=1.0)  # (b, s-1)
    return [
        TrainSequence(s.ids, s.mask, [0.0, *logprobs[i, : len(s.ids) - 1].tolist()], s.advantage)
        for i, s in enumerate(SEQUENCES)
    ]


def run_passes(passes: int, lr: float, clip_eps: float = 0.2) -> tuple[UpdateResult, int, int]:
    """-> (result, optimizer steps taken, scheduler steps taken)."""
    model = TinyLM()
    sequences = on_policy_sequences(model)
    config = TrainConfig.model_validate(
        {"base_model": "m", "updates_per_batch": passes, "clip_eps": clip_eps,
         "max_grad_norm": 1e9}
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    steps = [0]
    optimizer.register_step_post_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    result = grpo_update(model, optimizer, scheduler, sequences, config, pad_id=0)
    return result, steps[0], scheduler.last_epoch


def test_one_pass_over_on_policy_tokens_clips_nothing() -> None:
    result, optimizer_steps, scheduler_steps = run_passes(1, lr=5.0)
    assert (result.passes, optimizer_steps, scheduler_steps) == (1, 1, 1)
    assert result.clip_fraction == 0.0
    assert result.logprob_mismatch < 1e-5  # behaviour == trainer: the ratio starts at 1


def test_later_passes_move_the_ratio_and_clip_eps_bounds_it() -> None:
    # The ratio is new / behaviour: after the first optimizer step it leaves 1, so clip_eps acts
    result, optimizer_steps, scheduler_steps = run_passes(4, lr=5.0)
    assert (result.passes, optimizer_steps, scheduler_steps) == (4, 4, 1)
    assert result.clip_fraction > 0.0
    wide, _, _ = run_passes(4, lr=5.0, clip_eps=100.0)
    assert wide.clip_fraction == 0.0  # the same moves, never outside 1 +- 100


def test_a_clipped_token_stops_pushing_its_ratio() -> None:
    # With clipping the later passes move the weights less than the unclipped surrogate would
    def moved(clip_eps: float) -> float:
        model = TinyLM()
        before = model.head.weight.detach().clone()
        config = TrainConfig.model_validate(
            {"base_model": "m", "updates_per_batch": 6, "clip_eps": clip_eps,
             "max_grad_norm": 1e9}
        )  # fmt: skip
        optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        grpo_update(model, optimizer, scheduler, on_policy_sequences(model), config, pad_id=0)
        return float((model.head.weight.detach() - before).norm())

    assert moved(0.05) < moved(100.0)
