"""Forgetting signals: tool-call format checks, and KL(tuned || base) of in-process policies."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import pytest

from rollout.forgetting import argument_problem, format_checks, format_stats, schemas_of
from rollout.kl import (
    MAX_BATCH_LOGITS,
    SERVED,
    _load_pair,
    batches,
    measure_kl,
    score_kl,
    sequences_of,
)
from rollout.policy_spec import LocalSpec, ServerSpec
from rollout.trajectory import EpisodeMetrics, Trajectory, TrajectoryError, TurnTokens

SEARCH = {
    "type": "object",
    "properties": {
        "query": {"type": "string"},
        "k": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    },
    "required": ["query"],
    "additionalProperties": False,
}
SPECS = [{"type": "function", "function": {"name": "search", "parameters": SEARCH}}]


def call(name: str, arguments: Any) -> dict[str, Any]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": raw}}


def episode(
    row: str, calls: list[dict[str, Any]], answered: bool = True, error: str | None = None
) -> Trajectory:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "q"}]
    if calls:
        messages.append({"role": "assistant", "content": "", "tool_calls": calls})
    if answered:
        messages.append({"role": "assistant", "content": "Answer: 42"})
    return Trajectory(
        row_id=row, group_id=row, sample_index=0, env_id="e", policy_version="v",
        messages=messages, tools=["search", "read"], answer="42" if answered else None,
        reward=None if error else 1.0,
        error=TrajectoryError(kind=error, message="x") if error else None,  # type: ignore[arg-type]
        metrics=EpisodeMetrics(truncated=not answered, terminated=answered),
    )  # fmt: skip


def test_argument_checks_follow_the_offered_schema() -> None:
    assert argument_problem({"query": "x"}, SEARCH) is None
    assert argument_problem({"query": "x", "k": None}, SEARCH) is None
    assert argument_problem({"query": "x", "k": 3.0}, SEARCH) is None  # a whole number
    assert argument_problem({}, SEARCH) == "missing required argument 'query'"
    assert argument_problem({"query": "x", "top": 3}, SEARCH) == "unknown argument 'top'"
    assert argument_problem({"query": 3}, SEARCH) == "argument 'query' does not fit string"
    assert argument_problem({"query": "x", "k": "3"}, SEARCH) is not None
    assert argument_problem({"anything": 1}, None) is None  # no schema: nothing to check
    assert schemas_of(SPECS) == {"search": SEARCH}


def test_format_checks_count_each_kind_of_error_once_per_episode() -> None:
    good = episode("good", [call("search", {"query": "revenue"})])
    broken = episode("broken", [call("search", '{"query": "rev')])  # JSON cut short
    unknown = episode("unknown", [call("browse", {"url": "x"})])
    invalid = episode("invalid", [call("search", {"q": "revenue"})])
    unanswered = episode("unanswered", [call("search", {"query": "a"})], answered=False)
    infra = episode("infra", [call("browse", {})], answered=False, error="tool")
    stats = format_stats([good, broken, unknown, invalid, unanswered, infra], schemas_of(SPECS))
    assert stats.episodes == 5  # the tool server's failure is not the model's format
    assert (stats.calls, stats.malformed_calls, stats.unknown_tools) == (5, 1, 1)
    assert (stats.invalid_arguments, stats.unanswered, stats.flawed_episodes) == (1, 1, 4)
    assert stats.error_rate == pytest.approx(4 / 5)
    unchecked = format_stats([invalid], None)
    assert not unchecked.schemas_checked and unchecked.flawed_episodes == 0
    checks = format_checks("main", [good, good], [good, invalid], schemas_of(SPECS))
    assert checks.increase == pytest.approx(0.5)


# --- KL ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero_adapter_dir(tiny_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter as PEFT initialises it (lora_B = 0): the same function as the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
    out = tmp_path_factory.mktemp("zero_lora")
    peft_model.save_pretrained(str(out))
    return out


def tokens_played(count: int = 4, seed: int = 0) -> list[Trajectory]:
    """Tuned trajectories with two turns each: the second prompt extends the first."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = [rng.randrange(3, 100) for _ in range(12)]
        first = [rng.randrange(3, 100) for _ in range(6)]
        tool = [rng.randrange(3, 100) for _ in range(5)]
        second = [rng.randrange(3, 100) for _ in range(4)]
        turns = [
            TurnTokens(prompt_ids=prompt, completion_ids=first, logprobs=[0.0] * 6,
                       finish_reason="tool_calls", model="tuned", latency_s=0.0),
            TurnTokens(prompt_ids=prompt + first + tool, completion_ids=second,
                       logprobs=[0.0] * 4, finish_reason="stop", model="tuned", latency_s=0.0),
        ]  # fmt: skip
        out.append(
            Trajectory(
                row_id=f"r{i}",
                group_id=f"r{i}",
                sample_index=0,
                env_id="e",
                policy_version="tuned",
                messages=[],
                turns=turns,
            )
        )
    return out


def test_kl_is_zero_for_the_same_weights_and_positive_after_a_change(
    tiny_policy_dir: Path, zero_adapter_dir: Path, tiny_lora_adapter_dir: Path
) -> None:
    played = tokens_played()
    same = measure_kl(
        LocalSpec(tiny_policy_dir), LocalSpec(tiny_policy_dir, zero_adapter_dir), played,
        progress=False,
    )  # fmt: skip
    assert same.value is not None and same.value < 1e-6, same
    assert (same.tokens, same.sequences) == (4 * 10, 4)  # the generated tokens only
    changed = measure_kl(
        LocalSpec(tiny_policy_dir), LocalSpec(tiny_policy_dir, tiny_lora_adapter_dir), played,
        progress=False,
    )  # fmt: skip
    assert changed.value is not None and changed.value > 1e-3, changed
    # Both sides on the same adapter: switching between two loaded copies measures nothing.
    both = measure_kl(
        LocalSpec(tiny_policy_dir, tiny_lora_adapter_dir),
        LocalSpec(tiny_policy_dir, tiny_lora_adapter_dir),
        played,
        progress=False,
    )
    assert both.value is not None and both.value < 1e-6


def test_kl_scored_in_padded_batches_equals_one_sequence_at_a_time(
    tiny_policy_dir: Path, tiny_lora_adapter_dir: Path
) -> None:
    rng = random.Random(1)
    played = tokens_played(6)
    for i, trajectory in enumerate(played):  # one turn each, of different lengths: real padding
        prompt = [rng.randrange(3, 100) for _ in range(4 + 3 * i)]
        completion = [rng.randrange(3, 100) for _ in range(2 + i)]
        trajectory.turns = [trajectory.turns[0].model_copy(update={
            "prompt_ids": prompt, "completion_ids": completion, "logprobs": [0.0] * (2 + i)
        })]  # fmt: skip
    sequences = sequences_of(played)
    assert len({len(s.ids) for s in sequences}) > 3
    pair = _load_pair(LocalSpec(tiny_policy_dir), LocalSpec(tiny_policy_dir, tiny_lora_adapter_dir))
    assert not isinstance(pair, str)
    vocab = pair[1].model.config.vocab_size
    assert len(batches(sequences, vocab, MAX_BATCH_LOGITS)) == 1
    together = score_kl(*pair, sequences, progress=False)
    alone = score_kl(*pair, sequences, progress=False, max_batch_logits=1)
    assert together.tokens == alone.tokens == sum(sum(s.mask[1:]) for s in sequences)
    assert together.value is not None and alone.value is not None and alone.value > 1e-3
    assert together.value == pytest.approx(alone.value, rel=1e-4)


def test_kl_of_served_policies_is_unavailable_with_the_reason() -> None:
    served = ServerSpec("m", ("http://127.0.0.1:9",))
    result = measure_kl(served, served, tokens_played(1), progress=False)
    assert result.value is None and result.unavailable == SERVED
    assert measure_kl(None, None, []).unavailable is not None
