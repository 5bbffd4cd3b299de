"""The task-writing model: any OpenAI-compatible `/v1/chat/completions` endpoint, asked for JSON.

It is asked for structured output first (`response_format` json_schema, which vLLM and OpenAI
enforce); a server that refuses that field (400/422) is asked again with `json_object`, then
with no format at all (the prompt still asks for JSON), and keeps the format it accepted. Only
reaching the server is retried here (connection errors, timeouts, 408/429/5xx, with backoff):
what the model says is judged by the caller, who retries malformed replies itself.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from envs.taskgen.records import TaskgenError

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
FORMATS = ("json_schema", "json_object", "none")

TASK_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "tasks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "prompt": {"type": "string"},
                    "reference_answer": {"type": ["string", "null"]},
                    "observation_ids": {"type": "array", "items": {"type": "string"}},
                    "task_type": {"type": "string"},
                },
                "required": ["prompt", "reference_answer", "observation_ids", "task_type"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["tasks"],
    "additionalProperties": False,
}


class ModelConfig(BaseModel):
    """Where the task-writing model is and how to ask it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    base_url: str = Field(min_length=1)  # http://host:port or http://host:port/v1
    api_key_env: str | None = None  # the variable holding the key, never the key itself
    temperature: float = Field(default=0.7, ge=0)
    max_tokens: int = Field(default=4096, ge=64)
    timeout_s: float = Field(default=300.0, gt=0)
    max_retries: int = Field(default=2, ge=0)  # transport failures, per request
    backoff_s: float = Field(default=0.5, ge=0)

    @property
    def url(self) -> str:
        base = self.base_url.strip().rstrip("/")
        base = base.removesuffix("/v1")
        return f"{base}/v1/chat/completions"


class TaskModel:
    """Chat completions against one model; `format` is the response format in use."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.format = FORMATS[0]
        self.requests = 0
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise TaskgenError(f"the model's API key variable {config.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.AsyncClient(headers=headers, timeout=config.timeout_s)

    def _body(self, messages: list[dict[str, str]], seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.name,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "seed": seed,
        }
        if self.format == "json_schema":
            schema = {"name": "task_list", "strict": True, "schema": TASK_LIST_SCHEMA}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif self.format == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, messages: list[dict[str, str]], seed: int) -> str:
        """The reply's text. TaskgenError when the server cannot be reached or refuses."""
        while True:
            response = await self._post(self._body(messages, seed))
            refused_format = response.status_code in (400, 422) and self.format != "none"
            if not refused_format:
                break
            self.format = FORMATS[FORMATS.index(self.format) + 1]
        self.requests += 1
        if response.status_code != 200:
            raise TaskgenError(
                f"model {self.config.name} at {self.config.url} answered HTTP "
                f"{response.status_code}: {' '.join(response.text[:200].split())}"
            )
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return ""  # not a chat completion: as malformed as a reply gets
        return content if isinstance(content, str) else ""

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        problem = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                response = await self._http.post(self.config.url, json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code in RETRY_STATUS:
                problem = f"HTTP {response.status_code}"
                continue
            return response
        raise TaskgenError(
            f"model {self.config.name} at {self.config.url} could not be reached: {problem} "
            f"(after {self.config.max_retries + 1} attempts)"
        )

    async def aclose(self) -> None:
        await self._http.aclose()
