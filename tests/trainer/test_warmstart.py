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
from trainer.warmstart import (
    WarmStartSettings,
    demonstration_rows,
    lm_head_on_labelled_positions,
    sft_trainer,
    warm_start,
)

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


def test_lm_head_scores_only_labelled_positions_with_the_same_losses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU, TRL's fused LM head projects every position unless told otherwise; the
    switch must cut the projected rows to the labelled ones and leave the losses alone."""
    import trl.trainer.utils as trl_utils

    demos = [demo(f"Company{i}", f"{100 + 7 * i}.5") for i in range(8)]
    base = build_tiny_policy(
        tmp_path / "base", [json.dumps(d.messages) for d in demos] * 4, vocab_size=300,
        hidden_size=32, seed=0,
    )  # fmt: skip
    projected: list[int] = []
    fused = trl_utils._ChunkedLogProbFunction

    class CountingFused(fused):  # type: ignore[misc, valid-type]
        @staticmethod
        def forward(ctx: Any, hidden: torch.Tensor, *args: Any) -> Any:
            projected.append(hidden.shape[0])  # (positions projected, hidden)
            return fused.forward(ctx, hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingFused)
    settings = WarmStartSettings(batch_size=4, warmup_steps=0)

    def losses(compact: bool) -> tuple[list[float], list[int]]:
        projected.clear()
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base)
        trainer = sft_trainer(
            model, AutoTokenizer.from_pretrained(base), demonstration_rows(demos), 3, 4,
            settings, tmp_path / f"work-{compact}",
        )  # fmt: skip
        trainer.args.logging_steps = 1
        if compact:
            with lm_head_on_labelled_positions():
                trainer.train()
        else:
            trainer.train()
        return [e["loss"] for e in trainer.state.log_history if "loss" in e], list(projected)

    every_loss, every_rows = losses(compact=False)
    labelled_loss, labelled_rows = losses(compact=True)
    assert len(every_rows) == len(labelled_rows) == 3
    # the answer turns are a small part of each episode: a third of the rows at most
    assert all(3 * n < m for n, m in zip(labelled_rows, every_rows, strict=True)), (
        labelled_rows, every_rows,
    )  # fmt: skip
    assert labelled_loss == pytest.approx(every_loss, rel=1e-4)
    assert trl_utils._use_triton(torch.device("cpu")) is False  # restored on the way out
