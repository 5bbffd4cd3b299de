"""What the fake vLLM server's toy model says: pluggable scripts, chosen per server.

A script maps the chat request to the assistant's text (tool calls as markup); the server
tokenizes, parses and wraps it exactly as vLLM would.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from envs.markup import render_tool_call
from rollout.fake_chat import message_text

if TYPE_CHECKING:
    from rollout.fake_vllm import ChatRequest

Script = Callable[["ChatRequest"], str]  # a string: fake_vllm imports this module
_PATH = re.compile(r"\b(?:filings|reports)/[\w.\-/]+?\.html")
_FIGURE = re.compile(
    r"[$€£]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:million|billion|thousand|bn|m|k)\b)?"
    r"|\d[\d,]*(?:\.\d+)?\s?(?:%|percent\b|million\b|billion\b|thousand\b|USD\b|EUR\b|GBP\b)"
)


def _last_text(request: ChatRequest, role: str) -> str:
    for message in reversed(request.messages):
        if message.get("role") == role:
            return message_text(message.get("content"))
    return ""


def echo_script(request: ChatRequest) -> str:
    return "Answer: " + _last_text(request, "user")


def agent_script(request: ChatRequest) -> str:
    """Search with the question, read the first path found, answer with the first figure."""
    turn = sum(1 for m in request.messages if m.get("role") == "assistant")
    names = {str((t.get("function") or {}).get("name")) for t in request.tools or []}
    observation = _last_text(request, "tool")
    if turn == 0 and "search" in names:
        return render_tool_call("search", {"query": _last_text(request, "user")})
    if turn == 1 and "read" in names and (path := _PATH.search(observation)):
        return render_tool_call("read", {"path": path.group(0)})
    figure = _FIGURE.search(observation) if turn >= 1 else None
    return "Answer: " + (figure.group(0) if figure else "unknown")


SCRIPTS: dict[str, Script] = {"echo": echo_script, "agent": agent_script}
