"""The hermes tool-call markup (Qwen2.5's), rendered and parsed here and nowhere else.

An assistant calls a tool by writing

    <tool_call>
    {"name": "search", "arguments": {"query": "revenue"}}
    </tool_call>

(several calls, and any text before them, joined by newlines), and reads each result as

    <tool_response>
    ...
    </tool_response>

`render_tool_call` gives exactly the text Qwen's template (and the tiny policy's template,
built from the pieces below) renders for a call, so what a model is shown is what it learns to
write. `parse_tool_calls` reads markup back, also the compact `<tool_call>{...}</tool_call>` and
an unclosed last call (a generation cut short); a malformed call becomes a call with an `error`,
never an exception.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"
MARKUP_TOKENS = (TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE)

# A call is CALL_START + name as JSON + CALL_ARGUMENTS + arguments as JSON + CALL_END, which is
# the markup around json.dumps({"name": ..., "arguments": ...}) with its default separators.
CALL_START = TOOL_CALL_OPEN + '\n{"name": '
CALL_ARGUMENTS = ', "arguments": '
CALL_END = "}\n" + TOOL_CALL_CLOSE
RESPONSE_START = TOOL_RESPONSE_OPEN + "\n"
RESPONSE_END = "\n" + TOOL_RESPONSE_CLOSE
SEPARATOR = "\n"  # between the text and the first call, between calls, between responses

_CALL = re.compile(
    re.escape(TOOL_CALL_OPEN) + "(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + "|$)", re.DOTALL
)


# ---- rendering ----


def call_markup(name_json: str, arguments_json: str) -> str:
    """The markup around an already serialised name and arguments (or placeholders for them,
    as a prompt describing the format shows)."""
    return CALL_START + name_json + CALL_ARGUMENTS + arguments_json + CALL_END


def render_tool_call(name: str, arguments: Any) -> str:
    """One call as the template renders it. `arguments` is a JSON value (serialised here), or
    a string holding JSON text, written verbatim: it is exactly what the model produced."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return call_markup(json.dumps(name, ensure_ascii=False), raw)


def render_tool_calls(calls: Iterable[tuple[str, Any]], content: str = "") -> str:
    """An assistant turn's text: its content (when there is some), then each (name, arguments)."""
    parts = [render_tool_call(name, arguments) for name, arguments in calls]
    return SEPARATOR.join([content, *parts] if content else parts)


def render_tool_response(text: str) -> str:
    """One tool result as the model reads it."""
    return RESPONSE_START + text + RESPONSE_END


def render_tool_responses(texts: Iterable[str]) -> str:
    """Consecutive tool results, as they share one user turn."""
    return SEPARATOR.join(render_tool_response(text) for text in texts)


# ---- parsing ----


@dataclass(frozen=True)
class MarkupCall:
    """One call as written. `error` says why it cannot be run; `arguments` is then None."""

    name: str  # "" when the call names no function
    arguments: dict[str, Any] | None
    raw_arguments: str  # the arguments' JSON text (the call's whole text when it is not JSON)
    error: str | None = None


@dataclass(frozen=True)
class ParsedMarkup:
    content: str  # the text with every call's markup removed (the whole text when no calls)
    calls: list[MarkupCall] = field(default_factory=list)
    content_before: str = ""  # the text before the first call (vLLM's hermes parser's content)


def parse_arguments(raw: Any) -> tuple[dict[str, Any] | None, str, str | None]:
    """Arguments as they arrived (a dict, JSON object text, None): (the object, its JSON text,
    why they are unusable)."""
    if isinstance(raw, dict):
        return raw, json.dumps(raw, ensure_ascii=False), None
    if raw is None or raw == "":
        return {}, "{}", None
    if not isinstance(raw, str):
        return None, str(raw), "arguments must be a JSON object"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, raw, f"arguments are not valid JSON ({exc.msg} at position {exc.pos})"
    if not isinstance(value, dict):
        return None, raw, "arguments must be a JSON object"
    return value, raw, None


def parse_call(name: Any, arguments: Any) -> MarkupCall:
    """A call from its name and its arguments as they arrived, checked."""
    parsed, raw, error = parse_arguments(arguments)
    if not isinstance(name, str) or not name:
        return MarkupCall(str(name or ""), None, raw, "the tool call has no function name")
    return MarkupCall(name, parsed, raw, error)


def _call_from_body(body: str) -> MarkupCall:
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        return MarkupCall("", None, body, f"tool call markup is not valid JSON ({exc.msg})")
    if not isinstance(payload, dict):
        return MarkupCall("", None, body, "malformed tool call")
    return parse_call(payload.get("name"), payload.get("arguments"))


def parse_tool_calls(text: str) -> ParsedMarkup:
    """Every call in `text`, in order, each with an `error` when it cannot be run."""
    matches = list(_CALL.finditer(text))
    if not matches:
        return ParsedMarkup(text, [], text)
    calls = [_call_from_body(match.group(1).strip()) for match in matches]
    content = _CALL.sub("", text).strip()
    return ParsedMarkup(content, calls, text[: matches[0].start()].strip())
