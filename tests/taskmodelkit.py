"""A scripted OpenAI-compatible task-writing model under a real uvicorn on 127.0.0.1.

The script reads the request the generator sent (the observations it shows, fenced as
`[o3] tool {...}` then `<<<` text `>>>`), so its canned tasks cite observations that really
exist and answers that really occur in them; every request body is kept for the test to read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request

from testkit import LiveServer, start_server

Script = Callable[[dict[str, Any]], str]
_BLOCK = re.compile(r"^\[(o\d+)\] (\S+) (.*?)\n<<<\n(.*?)\n>>>", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Shown:
    id: str
    tool: str
    arguments: str
    text: str


def shown_observations(body: dict[str, Any]) -> list[Shown]:
    """The observations a request showed the model."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return [Shown(*match) for match in _BLOCK.findall(user)]


@dataclass
class TaskModel:
    live: LiveServer
    requests: list[dict[str, Any]] = field(default_factory=list)

    def spec(self, name: str = "writer") -> str:
        return f"{name}@{self.live.url}/v1"


def task_model_app(script: Script, requests: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        requests.append(body)
        content = script(body)
        return {
            "id": f"chatcmpl-{len(requests)}",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }

    return app


@contextmanager
def task_model(script: Script) -> Iterator[TaskModel]:
    requests: list[dict[str, Any]] = []
    live = start_server(task_model_app(script, requests))
    try:
        yield TaskModel(live, requests)
    finally:
        live.stop()
