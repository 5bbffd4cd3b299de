"""Warm start: supervised fine-tuning (TRL's `SFTTrainer`) on demonstration episodes.

GRPO learns only from the policy's own successes, so a policy that never succeeds gives it
nothing to learn from. A short SFT on the environment's own demonstration episodes
(`envs.data.demonstrations`) gets it to "sometimes right"; stopping early keeps it there,
which is where GRPO has signal (`toolgym prior-check` tells).

Two stages. First each assistant turn with only the message it answers (the question before
a search call, the tool result before an answer): short sequences, many per step, which is
how a model trained from scratch learns to copy a name or a figure from its context within
minutes on a CPU. Then the whole episodes, as the policy will play them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.data.demonstrations import Demonstration
from trainer.errors import TrainerError


@dataclass(frozen=True)
class WarmStartSettings:
    # Stage 1: single turns (0 skips it). Copying a figure from a tool result is learnt late and
    # suddenly: on the demo's 1,026 demonstrations, 500 steps ended at loss 0.13 and val pass@1
    # 0.006 (no copying), 1,000 steps at loss 0.009 and val pass@1 0.425 (2026-12-01).
    turn_steps: int = 1000
    turn_batch_size: int = 64
    max_steps: int = 150  # stage 2: whole episodes
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    max_length: int = 1024
    # Loss on what the assistant writes only (the template marks it): tool results are not
    # the policy's to predict.
    assistant_only_loss: bool = True
    seed: int = 0


def demonstration_rows(demos: list[Demonstration]) -> list[dict[str, Any]]:
    """TRL's conversational format: one row per episode, its messages and its tools."""
    return [{"messages": demo.messages, "tools": demo.tools} for demo in demos]


def turn_rows(demos: list[Demonstration]) -> list[dict[str, Any]]:
    """One row per assistant turn: the message it answers, then the turn."""
    rows = []
    for demo in demos:
        for i, message in enumerate(demo.messages):
            if message["role"] == "assistant" and i > 0:
                rows.append({"messages": [demo.messages[i - 1], message]})
    return rows


def warm_start(
    model_dir: Path, demos: list[Demonstration], out_dir: Path, settings: WarmStartSettings
) -> Path:
    """Fine-tune the whole model at `model_dir` on `demos`; save model + tokenizer to `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not demos:
        raise TrainerError("warm start: no demonstration episodes to learn from")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if settings.turn_steps:
        print(f"SFT stage 1: single turns, {settings.turn_steps} steps", flush=True)
        _sft(model, tokenizer, turn_rows(demos), settings.turn_steps, settings.turn_batch_size,
             settings, out_dir / "sft-turns")  # fmt: skip
    print(f"SFT stage 2: whole episodes, {settings.max_steps} steps", flush=True)
    _sft(model, tokenizer, demonstration_rows(demos), settings.max_steps, settings.batch_size,
         settings, out_dir / "sft-episodes")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _sft(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    steps: int,
    batch_size: int,
    settings: WarmStartSettings,
    work: Path,
) -> None:
    trainer = sft_trainer(model, tokenizer, rows, steps, batch_size, settings, work)
    with lm_head_on_labelled_positions():
        trainer.train()


def sft_trainer(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    steps: int,
    batch_size: int,
    settings: WarmStartSettings,
    work: Path,
) -> Any:
    """TRL's SFTTrainer over `rows` (conversational) for `steps` steps of `batch_size` rows."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        output_dir=str(work),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_steps,
        max_length=settings.max_length,
        assistant_only_loss=settings.assistant_only_loss,
        logging_steps=25,
        gradient_checkpointing=False,  # small models: memory is not the limit, time is
        bf16=_has_gpu(),  # TRL's default; on a CPU without bf16 units it is ~10x slower
        save_strategy="no",
        report_to=[],
        use_cpu=not _has_gpu(),
        dataloader_num_workers=0,
        seed=settings.seed,
    )
    return SFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )


@contextmanager
def lm_head_on_labelled_positions() -> Iterator[None]:
    """Have TRL's fused LM head score only the positions that carry a label, on any device.

    TRL projects only the labelled positions on Triton devices (GPUs) and every position
    elsewhere, to keep shapes static for graph compilers. On a CPU that means the prompt and the
    padding too: with the loss on assistant turns only, the demo's 64-turn batches carry ~1.7k
    labelled positions in ~9.7k, and projecting all of them was half of each SFT step (50
    stage-1 steps: 49-53 s -> 28-29 s, the same losses). Its compact path is
    plain torch indexing; only the choice of kernel depends on Triton, decided elsewhere."""
    from trl.trainer import utils as trl_utils

    use_triton = getattr(trl_utils, "_use_triton", None)
    if use_triton is None:  # a TRL without the switch: its own choice stands
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or use_triton(device)
    try:
        yield
    finally:
        trl_utils._use_triton = use_triton


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())
