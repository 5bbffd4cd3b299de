"""Tiny offline chat models for the rollout and trainer tests, and a LoRA adapter for one.

Everything is built locally from synthetic filings-like sentences; nothing is downloaded.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
import torch

from rollout.tiny_policy import build_tiny_policy

COMPANIES = ("Henderson Industries", "Marlow Capital", "Quillfield Energy", "Ostrava Foods")
METRICS = ("revenue", "net income", "operating margin", "free cash flow", "total debt")
TOOLS = ("search_filings", "get_table", "calculator")


def synthetic_texts(count: int = 400, seed: int = 0) -> list[str]:
    """Short filings-like sentences plus chat and tool markup, so the BPE learns all of them."""
    rng = random.Random(seed)
    texts: list[str] = []
    for _ in range(count):
        company, metric = rng.choice(COMPANIES), rng.choice(METRICS)
        value = f"${rng.randint(1, 9999):,}.{rng.randint(0, 9)} million"
        period = f"Q{rng.randint(1, 4)} {rng.randint(2019, 2025)}"
        texts.append(f"{company} reported {metric} of {value} in {period}.")
        call = {"name": rng.choice(TOOLS), "arguments": {"query": f"{company} {metric} {period}"}}
        texts.append(f"<tool_call>\n{json.dumps(call)}\n</tool_call>")
        texts.append(f"<tool_response>\n{company}: {metric} {value}\n</tool_response>")
        texts.append(f"<|im_start|>user\nWhat was the {metric} of {company}?<|im_end|>")
    return texts


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_policy(
        tmp_path_factory.mktemp("tiny_policy"), synthetic_texts(), vocab_size=512, seed=0
    )


@pytest.fixture(scope="session")
def tiny_lora_adapter_dir(tiny_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random, non-zero lora_B, so its outputs differ from the base."""
    return save_random_adapter(tiny_policy_dir, tmp_path_factory.mktemp("tiny_lora"))


def save_random_adapter(
    policy_dir: Path, out: Path, targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> Path:
    """A LoRA adapter on `targets` of the model in `policy_dir`, its weights random (seed 1)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_dir, local_files_only=True)
    with warnings.catch_warnings():  # transformers' own deprecation inside PEFT; tied lm_head
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, target_modules=list(targets))
        )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.save_pretrained(str(out))
    return out
