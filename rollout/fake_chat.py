"""The fake vLLM server's toy tokenizer and Qwen-like chat template.

Ids are up to three UTF-8 bytes each (near a real BPE's ~4 characters per token, so payload
sizes are realistic), special tokens are single ids, and chunking restarts at every newline
and special token. That makes the property the trainer relies on hold exactly: a conversation
re-rendered with the assistant's generated text extends the previous prompt + completion ids.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any

from envs.markup import (
    MARKUP_TOKENS,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    call_markup,
    render_tool_calls,
    render_tool_responses,
)

SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    *MARKUP_TOKENS,
    "<think>",
    "</think>",
)
SPECIAL_IDS = {token: 256 + index for index, token in enumerate(SPECIAL_TOKENS)}
IM_END = SPECIAL_IDS["<|im_end|>"]
GENERATION_PROMPT = "<|im_start|>assistant\n"
DEFAULT_SYSTEM = "You are a helpful assistant."
_SPECIAL = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
ROLES = {"system", "user", "assistant", "tool"}


# ---- toy tokenizer and chat template ----


_LINE = re.compile(rb"[^\n]*\n?")
_CHUNK = 3  # bytes per token: close to a real BPE's ~4 characters, so payloads are realistic
_BASE = {1: 0, 2: 1024, 3: 1024 + 65536}  # id offsets by chunk length (specials are 256..)


def _chunk_id(chunk: bytes) -> int:
    return _BASE[len(chunk)] + int.from_bytes(chunk, "big")


def _chunk_bytes(token_id: int) -> bytes:
    for length in (3, 2):
        if token_id >= _BASE[length]:
            return (token_id - _BASE[length]).to_bytes(length, "big")
    return bytes([token_id])


def encode(text: str) -> list[int]:
    """Up to three UTF-8 bytes per id, each special token one id (256..264), restarting at
    every newline and special token. So encode(a + b) == encode(a) + encode(b) whenever `a`
    ends with a newline or a special token, as the generation prompt does: a completion
    re-rendered into the next prompt gives back exactly the ids that were generated."""
    ids: list[int] = []
    for part in _SPECIAL.split(text):
        if part in SPECIAL_IDS:
            ids.append(SPECIAL_IDS[part])
            continue
        for line in _LINE.findall(part.encode()):
            ids.extend(_chunk_id(line[i : i + _CHUNK]) for i in range(0, len(line), _CHUNK))
    return ids


def decode(ids: list[int]) -> str:
    out: list[str] = []
    pending = bytearray()
    for token_id in ids:
        if 256 <= token_id < 256 + len(SPECIAL_TOKENS):
            out.append(pending.decode(errors="replace"))
            pending.clear()
            out.append(SPECIAL_TOKENS[token_id - 256])
            continue
        pending.extend(_chunk_bytes(token_id))
    out.append(pending.decode(errors="replace"))
    return "".join(out)


def message_text(content: Any) -> str:
    """Message content as text: a string, None, or a list of OpenAI text parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def _arguments_json(raw: Any) -> str:
    """vLLM decodes JSON-string arguments before templating (and re-serialises them); a string
    that does not decode stays a string."""
    value = raw or {}
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
    return json.dumps(value, ensure_ascii=False)


def assistant_text(content: Any, tool_calls: list[dict[str, Any]] | None) -> str:
    calls = [call.get("function") or {} for call in tool_calls or []]
    return render_tool_calls(
        ((f.get("name", ""), _arguments_json(f.get("arguments"))) for f in calls),
        message_text(content),
    )


def _turn(role: str, text: str) -> str:
    return f"<|im_start|>{role}\n{text}<|im_end|>\n"


def _tools_block(tools: list[dict[str, Any]]) -> str:
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listed}\n</tools>\n\nFor each function call, return a json object with "
        f"function name and arguments within {TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} XML tags:\n"
        + call_markup("<function-name>", "<args-json-object>")
    )


def render_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """The Qwen2.5-like chat template, generation prompt included."""
    return "".join(render_turns(messages, tools))


def encode_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
    """encode(render_prompt(...)), turn by turn: every turn starts with a special token, so
    the ids concatenate exactly, and a turn seen in an earlier request (the system prompt with
    its tools, earlier tool results) is not encoded again."""
    ids: list[int] = []
    for turn in render_turns(messages, tools):
        ids.extend(_encode_cached(turn))
    return ids


@functools.lru_cache(maxsize=8192)
def _encode_cached(text: str) -> tuple[int, ...]:
    return tuple(encode(text))


def render_turns(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[str]:
    rest = list(messages)
    system = rest.pop(0).get("content") if rest[0].get("role") == "system" else None
    out: list[str] = []
    if tools:
        out.append(_turn("system", message_text(system or DEFAULT_SYSTEM) + _tools_block(tools)))
    elif system is not None:
        out.append(_turn("system", message_text(system)))
    results: list[str] = []  # consecutive tool results share one user turn
    for index, message in enumerate(rest):
        role, content = message["role"], message.get("content")
        if role == "tool":
            results.append(message_text(content))
            if index + 1 == len(rest) or rest[index + 1]["role"] != "tool":
                out.append(_turn("user", render_tool_responses(results)))
                results = []
        elif role == "assistant":
            out.append(_turn(role, assistant_text(content, message.get("tool_calls"))))
        else:
            out.append(_turn(role, message_text(content)))
    return [*out, GENERATION_PROMPT]


def toy_logprob(seed: int, position: int) -> float:
    """A deterministic negative logprob, so tests can compare what was served with what was kept."""
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    unit = int.from_bytes(digest, "big") / 2**64
    return -round(0.001 + 4.0 * unit * unit, 6)


def token_bytes(token_id: int) -> bytes:
    if 256 <= token_id < 256 + len(SPECIAL_TOKENS):
        return SPECIAL_TOKENS[token_id - 256].encode()
    return _chunk_bytes(token_id)


def token_text(token_id: int) -> str:
    return token_bytes(token_id).decode(errors="replace")
