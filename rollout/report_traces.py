"""One policy's attempts at a row as HTML: each message, its tool calls and results (cut, and
saying so), and the grade. Every string from a model, a tool or a dataset is escaped."""

from __future__ import annotations

import html
import json
from typing import Any

from rollout.report_text import cut
from rollout.trajectory import Trajectory

TOOL_RESULT_CHARS = 400


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _text(content: Any) -> str:
    """Message content as text: a string, or OpenAI content parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def prompt_text(attempts: list[Trajectory]) -> str:
    for message in attempts[0].messages if attempts else []:
        if message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def _arguments(raw: Any) -> str:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return raw
    return json.dumps(raw, ensure_ascii=False)


def _message_html(message: dict[str, Any]) -> str:
    role, content = str(message.get("role", "?")), _text(message.get("content"))
    if role == "tool":
        name = message.get("name") or message.get("tool_call_id") or "tool"
        body = cut(content, TOOL_RESULT_CHARS)
        return f'<div class="msg tool"><b>← {_e(name)}</b><pre>{_e(body)}</pre></div>'
    parts = [f'<div class="msg {_e(role)}"><b>{_e(role)}</b>']
    if content.strip():
        parts.append(f"<pre>{_e(content)}</pre>")
    for call in message.get("tool_calls") or []:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        name, args = function.get("name", "?"), _arguments(function.get("arguments", ""))
        parts.append(f'<div class="call">→ <code>{_e(name)}</code>(<code>{_e(args)}</code>)</div>')
    return "".join(parts) + "</div>"


def _grade_html(grade: dict[str, Any] | None) -> str:
    if not grade:
        return '<div class="grade">grade: —</div>'
    details = grade.get("details") or {}
    items = "".join(
        f"<li><code>{_e(k)}</code>: {_e(cut(json.dumps(v, ensure_ascii=False, default=str), 160))}"
        "</li>"
        for k, v in list(details.items())[:6]
    )
    more = f"<li>… {len(details) - 6} more</li>" if len(details) > 6 else ""
    return (
        f'<div class="grade">verdict <b>{_e(grade.get("verdict", "?"))}</b>, '
        f"score {_e(grade.get('score', '—'))}<ul>{items}{more}</ul></div>"
    )


def trace_html(side: str, attempts: list[Trajectory]) -> str:
    """The first attempt in full; the others are only counted (they share the prompt)."""
    if not attempts:
        return f'<div class="trace"><h4>{_e(side)}</h4><p class="muted">no attempts</p></div>'
    first = min(attempts, key=lambda t: t.sample_index)
    heading = side if first.policy_version == side else f"{side} ({first.policy_version})"
    count = f"attempt 1 of {len(attempts)}" if len(attempts) > 1 else "1 attempt"
    reward = "failed" if first.reward is None else f"reward {first.reward:.3f}"
    users = [i for i, m in enumerate(first.messages) if m.get("role") == "user"]
    shown = [  # the system prompt is not shown; the first user message is, once above both
        _message_html(m)
        for i, m in enumerate(first.messages)
        if m.get("role") != "system" and i != (users[0] if users else -1)
    ]
    error = (
        f'<div class="error">error ({_e(first.error.kind)}): {_e(first.error.message)}</div>'
        if first.error
        else ""
    )
    answer = _e(first.answer) if first.answer is not None else '<span class="muted">none</span>'
    return (
        f'<div class="trace"><h4>{_e(heading)} · {count} · {reward} · '
        f"{first.metrics.tool_calls} tool calls</h4>{''.join(shown)}"
        f'<div class="answer"><b>final answer</b><pre>{answer}</pre></div>'
        f"{_grade_html(first.grade)}{error}</div>"
    )
