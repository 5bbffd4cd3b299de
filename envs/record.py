"""What an episode did, as a typed, frozen record: the environment's one account of it.

`ToolEnv.record` is the current episode's `EpisodeRecord`. The rollout and the demonstration
recorder read it field by field; Gymnasium's `info` dict is derived from it by `as_info()`,
the one place that names info keys, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: the graders are a heavy import the record does not need
    from envs.graders import GradeResult


@dataclass(frozen=True)
class CallRecord:
    """One tool call as the episode counted it, or one broken action (which costs a call)."""

    id: str
    name: str
    arguments: dict[str, Any] | None  # None: the action's arguments could not be read
    output: str  # the text the model saw, whatever the flag
    ok: bool  # the transport's error flag, inverted; never read off the text
    latency_s: float  # rounded to 0.1 ms when recorded: finer is noise, and sums stay exact

    def as_info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "arguments": self.arguments,
            "ok": self.ok,
            "latency_s": self.latency_s,
        }


def tool_name(spec: dict[str, Any]) -> str:
    """The function name of an OpenAI tool spec ('' when it has none)."""
    function = spec.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else ""


@dataclass(frozen=True)
class EpisodeRecord:
    row_id: str
    tools: tuple[dict[str, Any], ...]  # the tool specs offered to the policy
    calls: tuple[CallRecord, ...]
    turns: int
    tokens: int  # conversation tokens, by the environment's counter
    documents_read: tuple[str, ...]
    answer: str | None  # the final answer; None until the episode is answered
    grade: GradeResult | None
    infra_error: str | None  # the tool server failed: the episode has no reward

    @property
    def tool_names(self) -> list[str]:
        return [tool_name(spec) for spec in self.tools]

    @property
    def tools_used(self) -> list[str]:
        """Tools that answered without their error flag, sorted."""
        return sorted({c.name for c in self.calls if c.ok})

    @property
    def tool_errors(self) -> int:
        return sum(1 for c in self.calls if not c.ok)

    @property
    def grader_error(self) -> str | None:
        """Why the grader could not grade (not a wrong answer); None when it graded."""
        return self.grade.error if self.grade else None

    def as_info(self, *, with_tools: bool = False) -> dict[str, Any]:
        """Gymnasium's `info`: JSON-ready. `reset` adds the tool specs (`with_tools`); steps
        leave them out, as they do not change within an episode."""
        info: dict[str, Any] = {
            "row_id": self.row_id,
            "turns": self.turns,
            "tokens": self.tokens,
            "tool_calls": [c.as_info() for c in self.calls],
            "tools_used": self.tools_used,
            "documents_read": list(self.documents_read),
            "grade": self.grade.model_dump(mode="json") if self.grade else None,
            "grader_error": self.grader_error,
            "infra_error": self.infra_error,
            "answer": self.answer,
        }
        if with_tools:
            info["tools"] = list(self.tools)
        return info
