"""Warm start: TRL's SFTTrainer on demonstration episodes teaches a tiny model what they show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from envs.data.demonstrations import Demonstration
from rollout.tiny_policy import build_tiny_policy
from trainer.warmstart import WarmStartSettings, warm_start

TOOLS: list[dict[Any, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


def demo(company: str, figure: str) -> Demonstration:
    call = {"name": "search", "arguments": json.dumps({"query": f"{company} revenue"})}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Answer from the filings."},
        {"role": "user", "content": f"What was {company}'s revenue?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": call}]},
        {"role": "tool", "tool_call_id": "c1", "content": f"{company} revenue | {figure}"},
        {"role": "assistant", "content": f"Answer: ${figure} million"},
    ]
    return Demonstration(row_id=company, messages=messages, tools=TOOLS, reward=1.0)


def answer_logprob(model_dir: Path, example: Demonstration) -> float:
    """Log-probability of the demonstration's final answer given the conversation before it."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(
        example.messages[:-1], tools=list[Any](TOOLS), tokenize=False, add_generation_prompt=True
    )
    answer = example.messages[-1]["content"] + "<|im_end|>"
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + tokenizer(answer)["input_ids"]])  # (1, seq)
    with torch.no_grad():
        logprobs = model(ids).logits[0, :-1].log_softmax(-1)  # (seq - 1, vocab)
    targets = ids[0, 1:]  # (seq - 1,)
    picked = logprobs.gather(-1, targets[:, None])[:, 0]  # (seq - 1,)
    return float(picked[len(prompt_ids) - 1 :].sum())


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 3 min on 2 idle cores, 13 min on 2 cores shared four ways
def test_sft_on_demonstrations_makes_their_answers_likely(tmp_path: Path) -> None:
    demos = [demo(f"Company{i}", f"{100 + 7 * i}.5") for i in range(16)]
    texts = [json.dumps(d.messages) for d in demos] * 4
    base = build_tiny_policy(tmp_path / "base", texts, vocab_size=400, hidden_size=64, seed=0)
    tuned = warm_start(
        base, demos, tmp_path / "tuned", WarmStartSettings(max_steps=30, batch_size=8)
    )
    assert (tuned / "config.json").is_file() and (tuned / "tokenizer.json").is_file()
    for example in demos[:3]:
        before, after = answer_logprob(base, example), answer_logprob(tuned, example)
        assert after > before + 10, (before, after)


def test_warm_start_refuses_no_demonstrations(tmp_path: Path) -> None:
    from trainer.errors import TrainerError

    with pytest.raises(TrainerError, match="no demonstration"):
        warm_start(tmp_path, [], tmp_path / "out", WarmStartSettings())
