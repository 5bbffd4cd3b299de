"""The trainer's memory levers change memory, not maths: chunked logprobs and entropy give the
plain full-vocabulary computation's values and gradients, gradient checkpointing gives the same
loss and LoRA gradients, and both cut what is measured (the same measurements as test_plan's)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from test_plan import config_of, padded_batch, peak_bytes, saved_bytes

from trainer.loss import policy_loss, token_logprobs


def plain_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """The code before chunking (trainer/loss.py at 86b7194), kept as the reference."""
    scaled = logits.float() / temperature  # (batch, seq, vocab)
    picked = torch.gather(scaled, 2, ids.unsqueeze(2)).squeeze(2)  # (batch, seq)
    return picked - torch.logsumexp(scaled, dim=2)  # (batch, seq)


def plain_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The code before chunking (trainer/loss.py at 86b7194), kept as the reference."""
    logp = torch.log_softmax(logits.float() / temperature, dim=2)  # (batch, seq, vocab)
    return -(logp.exp() * logp).sum(dim=2)  # (batch, seq)


def plain_forward(model: Any, batch: Any, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """trainer/update.py's forward_logprobs before chunking."""
    logits = model(input_ids=batch.ids, attention_mask=batch.attention).logits  # (b, s, v)
    logits = logits[:, :-1]  # (b, s-1, v)
    logprobs = plain_logprobs(logits, batch.ids[:, 1:], temperature)  # (b, s-1)
    with torch.no_grad():
        entropy = plain_entropy(logits.detach(), temperature)  # (b, s-1)
    return logprobs, entropy


# (budget in elements, what it exercises): one position per chunk, chunks with a remainder,
# everything in one chunk
BUDGETS = [1, 3 * 4 * 50, 2**22]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logprobs_match_the_plain_ones(
    budget: int, temperature: float, dtype: torch.dtype
) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4, 12, 50, generator=generator)).to(dtype)  # (b, s, v)
    ids = torch.randint(0, 50, (4, 11), generator=generator)  # (b, s-1): the last predicts none
    upstream = torch.randn(4, 11, generator=generator)  # (b, s-1): any loss's gradient

    plain_in = logits.clone().requires_grad_()
    plain = plain_logprobs(plain_in[:, :-1], ids, temperature)  # (b, s-1)
    (plain * upstream).sum().backward()
    chunked_in = logits.clone().requires_grad_()
    chunked, entropy = token_logprobs(chunked_in, ids, temperature, entropy=True, budget=budget)
    (chunked * upstream).sum().backward()

    assert chunked.dtype == torch.float32 and chunked.shape == (4, 11)
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    assert entropy is not None and not entropy.requires_grad
    torch.testing.assert_close(entropy, plain_entropy(logits[:, :-1], temperature))
    assert chunked_in.grad is not None and plain_in.grad is not None
    assert chunked_in.grad.dtype == dtype
    assert float(chunked_in.grad[:, -1].abs().sum()) == 0.0  # the last position predicts none
    # float32: the same up to rounding; bfloat16: both round the same float32 gradient, so at
    # most one unit in the last place apart
    torch.testing.assert_close(chunked_in.grad, plain_in.grad, rtol=1e-6 if dtype == torch.float32
                               else 8e-3, atol=1e-7)  # fmt: skip


def test_without_entropy_none_is_computed() -> None:
    logits = torch.randn(2, 5, 30)  # (b, s, v)
    logprobs, entropy = token_logprobs(logits, torch.zeros(2, 4, dtype=torch.long), 1.0)
    assert entropy is None and logprobs.shape == (2, 4)


def lora_model(model_dir: Path, checkpointing: bool = False) -> Any:
    """The model as the trainer loads it (`load_trainable`), LoRA B nudged off zero so every
    LoRA weight gets a gradient."""
    from trainer.config import TrainConfig
    from trainer.train import load_trainable

    config = TrainConfig.model_validate({
        "base_model": str(model_dir),
        "policy": {"backend": "local", "device": "cpu"},
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        "gradient_checkpointing": checkpointing,
    })  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = load_trainable(config, None)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    return model


def vocab_of(model_dir: Path) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model_dir).vocab_size)


def is_checkpointing(model: Any) -> bool:
    """Whether transformers will checkpoint the decoder layers (in training mode)."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def loss_and_grads(
    model: Any, batch: Any, forward: Any, temperature: float = 0.8
) -> tuple[float, float, dict[str, torch.Tensor]]:
    """The trainer's policy pass (forward, loss, backward): (loss, mean entropy, LoRA grads)."""
    model.train()
    model.zero_grad(set_to_none=True)
    logprobs, entropy = forward(model, batch, temperature)  # (b, s-1) each
    # ratios from 0.9 to 1.1 with clip_eps 0.05: some tokens clipped, the others trained on
    offsets = torch.linspace(-0.1, 0.1, logprobs.shape[1])  # (s-1,)
    behaviour = logprobs.detach() + offsets  # (b, s-1)
    loss, _ = policy_loss(logprobs, behaviour, batch.advantages, batch.mask, clip_eps=0.05)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), float(entropy.mean()), grads


def test_the_trainer_pass_matches_the_plain_one(tiny_policy_dir: Path) -> None:
    from trainer.update import forward_logprobs

    model = lora_model(tiny_policy_dir)
    batch = padded_batch([40, 31, 24], vocab_of(tiny_policy_dir))
    plain = loss_and_grads(model, batch, plain_forward)
    chunked = loss_and_grads(model, batch, forward_logprobs)
    assert chunked[0] == pytest.approx(plain[0], rel=1e-6)
    assert chunked[1] == pytest.approx(plain[1], rel=1e-6)
    assert plain[2].keys() == chunked[2].keys() and len(plain[2]) == 3 * 2 * 2  # layers x A, B
    for name, grad in plain[2].items():
        assert float(grad.abs().sum()) > 0, name
        torch.testing.assert_close(chunked[2][name], grad, rtol=1e-5, atol=1e-8)


def test_the_reference_pass_computes_no_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The KL reference pass throws the entropy away: it must not pay for it."""
    import trainer.update as update

    asked: list[bool] = []
    real = update.token_logprobs

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(bool(kwargs.get("entropy", False)))
        return real(*args, **kwargs)

    monkeypatch.setattr(update, "token_logprobs", spy)
    from test_update import update as run_update

    result = run_update(kl_coef=0.1)
    assert result.kl_to_ref is not None and result.entropy > 0
    assert asked == [True, False]  # the policy pass measures it, the reference pass does not


def test_checkpointing_gives_the_same_loss_and_grads_with_less_kept(
    tiny_policy_dir: Path,
) -> None:
    from trainer.update import forward_logprobs

    batch = padded_batch([48, 40], vocab_of(tiny_policy_dir))
    plain_model, checkpointed = lora_model(tiny_policy_dir), lora_model(tiny_policy_dir, True)
    assert not is_checkpointing(plain_model) and is_checkpointing(checkpointed)
    plain = loss_and_grads(plain_model, batch, forward_logprobs)
    again = loss_and_grads(checkpointed, batch, forward_logprobs)
    assert again[0] == pytest.approx(plain[0], rel=1e-6)
    assert plain[2].keys() == again[2].keys() and len(plain[2]) == 12  # every LoRA weight
    for name, grad in plain[2].items():
        torch.testing.assert_close(again[2][name], grad, rtol=1e-5, atol=1e-8)
    kept, kept_checkpointed = saved_bytes(plain_model, batch), saved_bytes(checkpointed, batch)
    print(f"\nsaved for backward: {kept:,} B, checkpointed {kept_checkpointed:,} B")  # -s
    assert kept_checkpointed < kept / 2


def test_chunking_cuts_the_measured_peak(tmp_path: Path) -> None:
    """The logits are the largest item with a real vocabulary: measured as test_plan measures
    the peak, chunking takes them from (dtype + 16) B per entry to 2 x dtype B per entry and
    two float32 chunks (128 positions of this vocabulary each: four chunks here)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = config_of(
        "qwen2", hidden_size=64, intermediate_size=344, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=131072, dtype="bfloat16",
    )  # fmt: skip
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
        model = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    batch = padded_batch([512], 131072)
    plain = peak_bytes(model, batch, tmp_path / "plain.json", forward=plain_forward)
    chunked = peak_bytes(model, batch, tmp_path / "chunked.json")
    print(f"\npeak V131072 b1 s512: plain {plain:,} B, chunked {chunked:,} B")  # -s
    assert chunked < plain / 2


def test_a_checkpointed_update_with_a_kl_reference_is_the_same_update(
    tiny_policy_dir: Path,
) -> None:
    """grpo_update end to end (the reference pass runs through the checkpointed layers under
    no_grad with the adapter disabled): the same figures, the same LoRA weights after."""
    from trainer.batch import TrainSequence
    from trainer.config import TrainConfig
    from trainer.train import make_optimizer
    from trainer.update import grpo_update

    generator = torch.Generator().manual_seed(2)
    vocab = vocab_of(tiny_policy_dir)
    sequences = [
        TrainSequence(ids.tolist(), [0] * 6 + [1] * (len(ids) - 6), [-6.0] * len(ids), adv)
        for ids, adv in ((torch.randint(1, vocab, (n,), generator=generator), a)
                         for n, a in ((30, 1.0), (22, -0.5), (26, 0.25)))
    ]  # fmt: skip

    def updated(checkpointing: bool) -> tuple[Any, dict[str, torch.Tensor]]:
        model = lora_model(tiny_policy_dir, checkpointing)
        config = TrainConfig.model_validate(
            {"base_model": "m", "kl_coef": 0.1, "micro_batch_size": 2, "learning_rate": 1e-3}
        )
        optimizer, scheduler = make_optimizer(model, config)
        result = grpo_update(model, optimizer, scheduler, sequences, config, pad_id=0)
        lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return result, lora

    (plain, plain_lora), (again, again_lora) = updated(False), updated(True)
    assert plain.kl_to_ref is not None and plain.kl_to_ref > 0 and plain.grad_norm > 0
    for field in ("loss", "kl_to_ref", "grad_norm", "entropy", "logprob_mismatch"):
        assert getattr(again, field) == pytest.approx(getattr(plain, field), rel=1e-5), field
    for name, weight in plain_lora.items():
        torch.testing.assert_close(again_lora[name], weight, rtol=1e-5, atol=1e-7)


def test_a_resumed_adapter_is_checkpointed_too(
    tiny_policy_dir: Path, tiny_lora_adapter_dir: Path
) -> None:
    from trainer.config import TrainConfig
    from trainer.train import load_trainable
    from trainer.update import forward_logprobs

    config = TrainConfig.model_validate({
        "base_model": str(tiny_policy_dir),
        "policy": {"backend": "local", "device": "cpu"},
        "gradient_checkpointing": True,
    })  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = load_trainable(config, tiny_lora_adapter_dir)
    assert is_checkpointing(model)
    assert any(p.requires_grad for p in model.parameters())
    batch = padded_batch([20, 16], vocab_of(tiny_policy_dir))
    _, _, grads = loss_and_grads(model, batch, forward_logprobs)
    assert grads and all(float(g.abs().sum()) > 0 for g in grads.values())
