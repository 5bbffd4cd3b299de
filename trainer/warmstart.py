"""Warm start: supervised fine-tuning (TRL's `SFTTrainer`) on demonstration episodes.

GRPO learns only from the policy's own successes, so a policy that never succeeds gives it
nothing to learn from. A short SFT on the environment's own demonstration episodes
(`envs.data.demonstrations`) gets it to "sometimes right"; stopping early keeps it there,
which is where GRPO has signal (`toolgym prior-check` tells).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from envs.data.demonstrations import Demonstration
from trainer.errors import TrainerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStartSettings:
    max_steps: int = 200
    learning_rate: float = 3e-3
    batch_size: int = 32
    warmup_steps: int = 20
    max_length: int = 1024
    # Loss on what the assistant writes only (the template marks it): tool results are not
    # the policy's to predict, and the copy skills it needs are learnt faster this way.
    assistant_only_loss: bool = True
    seed: int = 0


def demonstration_rows(demos: list[Demonstration]) -> list[dict[str, object]]:
    """TRL's conversational format: one row per episode, its messages and its tools."""
    return [{"messages": demo.messages, "tools": demo.tools} for demo in demos]


def warm_start(
    model_dir: Path, demos: list[Demonstration], out_dir: Path, settings: WarmStartSettings
) -> Path:
    """Fine-tune the whole model at `model_dir` on `demos`; save model + tokenizer to `out_dir`."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if not demos:
        raise TrainerError("warm start: no demonstration episodes to learn from")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = SFTConfig(
        output_dir=str(out_dir / "sft-work"),
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_steps,
        max_length=settings.max_length,
        assistant_only_loss=settings.assistant_only_loss,
        logging_steps=10,
        gradient_checkpointing=False,  # small models: memory is not the limit, time is
        bf16=_has_gpu(),  # TRL's default; on a CPU without bf16 units it is ~10x slower
        save_strategy="no",
        report_to=[],
        use_cpu=not _has_gpu(),
        dataloader_num_workers=0,
        seed=settings.seed,
        disable_tqdm=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(demonstration_rows(demos)),
        processing_class=tokenizer,
    )
    trainer.train()
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())
