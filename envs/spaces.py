"""Gymnasium spaces for chat: observations are message lists, actions assistant messages.

`AssistantActions.sample()` deliberately produces a mix of answers, well-formed tool calls and
garbage (broken JSON, unknown tools, empty messages), so `check_env` exercises the error paths.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.markup import render_tool_call

ROLES = ("system", "user", "assistant", "tool")
_WORDS = ("revenue", "margin", "Henderson", "2025", "Q3", "net income", "{", "\x00", "", "'")


class _ObjectSpace(spaces.Space[Any]):
    """A space of Python objects (no shape, no dtype); equal to any space of its own class."""

    def __init__(self, seed: int | np.random.Generator | None = None) -> None:
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self)


class ChatMessages(_ObjectSpace):
    """A list of OpenAI-style chat messages (role + string content)."""

    def contains(self, x: Any) -> bool:
        return isinstance(x, list) and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content", ""), str)
            for m in x
        )

    def sample(self, mask: Any = None, probability: Any = None) -> list[dict[str, Any]]:
        n = int(self.np_random.integers(0, 3))
        return [{"role": "tool", "content": _text(self.np_random)} for _ in range(n)]


class AssistantActions(_ObjectSpace):
    """One assistant turn: a message dict (content, tool_calls) or plain text with markup."""

    def contains(self, x: Any) -> bool:
        return isinstance(x, str | dict)

    def sample(self, mask: Any = None, probability: Any = None) -> Any:
        rng = self.np_random
        kind = int(rng.integers(0, 6))
        if kind == 0:
            return {"role": "assistant", "content": _text(rng)}
        if kind == 1:
            name = str(rng.choice(["search", "list", "read", "delete_everything"]))
            args = json.dumps(
                {"query": _text(rng), "path": _text(rng), "top_k": int(rng.integers(-3, 99))}
            )
            return {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c0", "type": "function", "function": {"name": name, "arguments": args}}
                ],
            }
        if kind == 2:
            return {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"function": {"name": "read", "arguments": "{broken"}}],
            }
        if kind == 3:
            return render_tool_call("search", {"query": _text(rng)})
        if kind == 4:
            return ""
        return _text(rng)


def _text(rng: np.random.Generator) -> str:
    count = int(rng.integers(0, 6))
    return " ".join(str(rng.choice(_WORDS)) for _ in range(count))
