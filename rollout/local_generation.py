"""From `generate`'s output to a `Turn`, and the seed of a batch: the pure parts of the
in-process policy (rollout.local_policy): no model, no event loop."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from envs.actions import parse_action
from rollout.policy import Turn


def stop_ids(tokenizer: Any, generation_config: GenerationConfig | None) -> frozenset[int]:
    """Every id that ends a turn: the tokenizer's eos plus the model's generation eos ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = generation_config.eos_token_id if generation_config is not None else None
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    return frozenset(ids)


def turn_from_generation(
    tokenizer: Any,
    prompt_ids: Sequence[int],
    generated_ids: Sequence[int],
    logprobs: Sequence[float],
    *,
    eos_ids: frozenset[int],
    model: str,
    latency_s: float,
) -> Turn:
    """One row of `generate` output as a `Turn`.

    The row is cut after its first stop token (what follows is batch padding); the text is
    decoded without special tokens but with the tool markup (not special), and parsed into an
    OpenAI-shaped message by the same parser the environments use.
    """
    end = next((i + 1 for i, tok in enumerate(generated_ids) if tok in eos_ids), None)
    completion = [int(t) for t in generated_ids[: end if end is not None else len(generated_ids)]]
    text = tokenizer.decode(
        completion, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    action = parse_action(text)
    if end is None:
        finish = "length"
    elif action.tool_calls:
        finish = "tool_calls"
    else:
        finish = "stop"
    return Turn(
        message=action.as_message(), prompt_ids=[int(t) for t in prompt_ids],
        completion_ids=completion, logprobs=[float(x) for x in logprobs[: len(completion)]],
        finish_reason=finish, model=model, latency_s=latency_s
    )  # fmt: skip


def batch_seed(seeds: Sequence[int | None]) -> int | None:
    """One seed for a whole batch, a pure function of its rows' seeds (None when none has one)."""
    if all(s is None for s in seeds):
        return None
    digest = hashlib.sha256(json.dumps(list(seeds)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for one generate call without disturbing the global stream."""
    if seed is None:
        yield
        return
    cuda = (
        [torch.cuda.current_device() if device.index is None else device.index]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
