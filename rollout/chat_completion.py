"""Reading a vLLM / OpenAI `chat.completion` reply: the Turn it carries, or the server's error.

Token ids and logprobs are taken exactly as served (`return_token_ids`, `logprobs: true`);
a reply without them is refused, since re-tokenizing the text could train on tokens the
model never produced.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from rollout.errors import PolicyError, TokenIdsMissingError
from rollout.policy import Turn

_NUMBER = (int, float)  # a tuple: `int | float` would build a new union for every token


class JsonResponse(Protocol):
    """What the policy reads of a reply: an httpx.Response, or envs.aiohttp_client's."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def server_message(response: JsonResponse) -> str:
    """The server's own error text: vLLM's {"error": {"message"}}, FastAPI's detail, or text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "message", "detail"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]


def _tool_call(raw: Any) -> dict[str, Any]:
    """One tool call in OpenAI shape, arguments as a JSON string."""
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict):
        raise ValueError(f"malformed tool call {raw!r}")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {
        "id": str(raw.get("id") or ""),
        "type": "function",
        "function": {"name": str(function.get("name") or ""), "arguments": arguments},
    }


def parse_turn(response: JsonResponse, url: str, latency_s: float) -> Turn:
    """The Turn from a chat.completion body; token ids and logprobs exactly as served."""
    try:
        body = response.json()
        choice = body["choices"][0]
        message = choice["message"]
        tool_calls = [_tool_call(raw) for raw in message.get("tool_calls") or []]
        served_model = str(body.get("model") or "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise PolicyError(f"policy server {url} sent an unreadable completion: {exc!r}") from None
    prompt_ids, completion_ids = body.get("prompt_token_ids"), choice.get("token_ids")
    if not isinstance(prompt_ids, list) or not isinstance(completion_ids, list):
        raise TokenIdsMissingError(
            f"policy server {url} returned no token ids (prompt_token_ids / choices[0].token_ids)"
            ": it must honour the request field `return_token_ids` (vLLM 0.10.2 or newer; this "
            "project targets vLLM 0.33, started by `toolgym vllm serve`)"
        )
    entries = (choice.get("logprobs") or {}).get("content") or []
    logprobs = [
        float(entry["logprob"])
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("logprob"), _NUMBER)
    ]
    if len(logprobs) != len(completion_ids) or len(entries) != len(completion_ids):
        raise TokenIdsMissingError(
            f"policy server {url} returned {len(logprobs)} logprobs for {len(completion_ids)} "
            "completion token ids: it must honour `logprobs: true` with one entry per token "
            "(vLLM 0.33 started with --max-logprobs >= 0, as `toolgym vllm serve` does)"
        )
    content = message.get("content")
    turn_message: dict[str, Any] = {"role": "assistant", "content": content or ""}
    if tool_calls:
        turn_message["tool_calls"] = tool_calls
    return Turn(
        message=turn_message,
        prompt_ids=prompt_ids,  # JSON integers as served; TurnTokens validates them
        completion_ids=completion_ids,
        logprobs=logprobs,
        finish_reason=str(choice.get("finish_reason") or "stop"),
        model=served_model,
        latency_s=latency_s,
    )
