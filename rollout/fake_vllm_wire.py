"""The fake vLLM server's wire format: the request bodies it accepts (pydantic), vLLM's error
body, and its hermes tool-call parsing (rollout.fake_vllm serves them)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from envs.markup import parse_tool_calls
from rollout.fake_chat import ROLES


class ChatRequest(BaseModel):
    """The request fields the fake honours; others are ignored, as vLLM ignores them."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    logprobs: bool = False
    return_token_ids: bool = False
    stream: bool = False

    @field_validator("messages")
    @classmethod
    def _roles(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for message in messages:
            if message.get("role") not in ROLES:
                raise ValueError(f"unknown message role {message.get('role')!r}")
        return messages


class LoadLoraRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False


class UnloadLoraRequest(BaseModel):
    lora_name: str = Field(min_length=1)


def parse_hermes(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """Like vLLM's hermes parser: content is the text before the markup, calls in OpenAI shape;
    any unparsable call leaves the whole text as content with no calls. The calls are read by
    the environments' own parser (envs.markup), so the two cannot disagree."""
    parsed = parse_tool_calls(text)
    if not parsed.calls or any(call.error for call in parsed.calls):
        return text, []
    calls = [
        {
            "id": f"chatcmpl-tool-{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call.name, "arguments": call.raw_arguments},
        }
        for call in parsed.calls
    ]
    return parsed.content_before or None, calls


_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}


def error_response(status: int, message: str) -> JSONResponse:
    """vLLM's error body."""
    kind = _ERROR_TYPES.get(
        status, "InternalServerError" if status < 503 else "ServiceUnavailableError"
    )
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


async def read_body(request: Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:  # bad JSON or bad fields
        return error_response(400, f"invalid request: {exc}")
