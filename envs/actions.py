"""Turn one assistant action into content and tool calls, whatever shape it arrives in.

Accepted: an OpenAI chat message dict (`content`, `tool_calls` with JSON-string arguments), a
JSON string of such a message, or plain text with the hermes tool-call markup (envs.markup
renders and parses it). Anything malformed becomes a call or a message with an `error`, which
the episode shows to the model; parsing never raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from envs.markup import MarkupCall, parse_call, parse_tool_calls

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any] | None  # None when the arguments could not be parsed
    raw_arguments: str
    error: str | None = None


@dataclass(frozen=True)
class ParsedAction:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None  # the action as a whole is unusable

    def as_message(self) -> dict[str, Any]:
        """The assistant message as it enters the conversation (OpenAI shape)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.raw_arguments},
                }
                for call in self.tool_calls
            ]
        return message


def _tool_call(ident: str, call: MarkupCall) -> ToolCall:
    return ToolCall(ident, call.name, call.arguments, call.raw_arguments, call.error)


def _call(index: int, turn: int, name: Any, raw_args: Any, call_id: Any = None) -> ToolCall:
    ident = call_id if isinstance(call_id, str) and call_id else f"call_{turn}_{index}"
    return _tool_call(ident, parse_call(name, raw_args))


def _from_message(message: dict[str, Any], turn: int) -> ParsedAction:
    content = message.get("content")
    content = content if isinstance(content, str) else ""
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        return ParsedAction(content, error="tool_calls must be a list")
    calls: list[ToolCall] = []
    for index, raw in enumerate(raw_calls):
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict):
            calls.append(
                ToolCall(f"call_{turn}_{index}", "", None, str(raw), "malformed tool call")
            )
            continue
        calls.append(
            _call(index, turn, function.get("name"), function.get("arguments"), raw.get("id"))
        )
    if not calls and content:
        return _from_text(content, turn)  # a server without a tool parser returns raw markup
    return ParsedAction(content, calls)


def _from_text(text: str, turn: int) -> ParsedAction:
    parsed = parse_tool_calls(text)
    calls = [_tool_call(f"call_{turn}_{i}", call) for i, call in enumerate(parsed.calls)]
    return ParsedAction(parsed.content, calls)


def parse_action(action: Any, turn: int = 0) -> ParsedAction:
    """Parse any action; problems are carried in `error` fields, never raised."""
    if isinstance(action, dict):
        return _from_message(action, turn)
    if not isinstance(action, str):
        return ParsedAction(
            "", error=f"an action must be a message or text, not {type(action).__name__}"
        )
    stripped = action.strip()
    if stripped.startswith("{"):
        try:
            message = json.loads(stripped)
        except json.JSONDecodeError:
            message = None
        if isinstance(message, dict) and ("content" in message or "tool_calls" in message):
            return _from_message(message, turn)
    return _from_text(action, turn)


def final_answer(content: str) -> str:
    """The answer text without reasoning blocks."""
    return _THINK.sub("", content).strip()
