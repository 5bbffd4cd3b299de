"""The demo's policy: demonstration episodes over MCP, then a small Qwen2 built from them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from envs.data.demonstrations import Demonstration, read_demonstrations, record_demonstrations
from envs.data.rows import load_rows
from envs.markup import render_tool_call
from envs.tool_env import ToolEnv
from trainer.errors import TrainerError


@dataclass(frozen=True)
class PolicyShape:
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_position_embeddings: int = 2048


async def record_demos(
    env_id: str, rows_path: Path, mcp_url: str, out: Path, *, scale_slips: bool
) -> list[Demonstration]:
    """Play every row with the oracle through `env_id`, its tools reached over MCP; with
    `scale_slips` the rows answered in millions also once with the scale misread."""
    import gymnasium as gym

    rows = load_rows(rows_path)
    env = gym.make(
        env_id, disable_env_checker=True, dataset=rows, tools_url=mcp_url, transport="mcp"
    ).unwrapped
    if not isinstance(env, ToolEnv):
        raise TrainerError(f"{env_id} is not a ToolEnv; demonstrations need one")
    try:
        # top_k=1 and no reads: short episodes a small model can learn in minutes
        written, problems = await record_demonstrations(
            env, rows, out, top_k=1, read=False, scale_slips=scale_slips
        )
    finally:
        await env.aclose()
    if problems:
        print(f"{len(problems)} of {len(rows)} rows without a demonstration, e.g. {problems[0]}")
    if not written:
        raise TrainerError("no demonstration episode succeeded; see the problems above")
    demos = read_demonstrations(out)
    slips = sum(d.slip for d in demos)
    print(
        f"{len(demos)} demonstrations: {len(demos) - slips} right, {slips} with the scale "
        f"misread (thousand for million; graded {_mean(d.reward for d in demos if d.slip)})"
    )
    return demos


def _mean(values: Iterator[float]) -> str:
    items = list(values)
    return f"{sum(items) / len(items):.2f} on average" if items else "-"


def demonstration_texts(demos: list[Demonstration]) -> Iterator[str]:
    """What the policy reads and writes: the texts, and tool calls as the template shows them."""
    for demo in demos:
        for message in demo.messages:
            yield str(message.get("content") or "")
            for call in message.get("tool_calls") or []:
                function = call["function"]
                yield render_tool_call(function["name"], function["arguments"])
        yield json.dumps(demo.tools)


def build_policy(out: Path, demos: list[Demonstration], shape: PolicyShape, seed: int) -> Path:
    """A random-weight Qwen2 with a tokenizer trained on the demonstrations' own text."""
    from rollout.tiny_policy import build_tiny_policy

    print(
        f"building a Qwen2 policy: {shape.num_layers} layers, hidden {shape.hidden_size}, "
        f"vocabulary {shape.vocab_size} (BPE trained on the demonstrations) -> {out}"
    )
    return build_tiny_policy(
        out,
        demonstration_texts(demos),
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        max_position_embeddings=shape.max_position_embeddings,
        seed=seed,
    )
