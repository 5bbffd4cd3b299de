"""A scripted OpenAI-compatible judge for the RULER tests, served by a real uvicorn on 127.0.0.1.

It reads a RULER prompt the way a judge model would (the task between <<< >>>, the attempts
under "## Attempt k" headings), replies with a score per attempt (attempt k of n gets k/n, so
every group has signal and the scores are known), reports token `usage`, and records every
request. `garbage_for` names tasks it answers without scores; `down` makes it answer 503.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from testkit import LiveServer, start_server

_TASK = re.compile(r"<<<\n(.*?)\n>>>", re.DOTALL)
_ATTEMPT = re.compile(r"^## Attempt (\d+)$", re.MULTILINE)
PROMPT_TOKENS = 100
COMPLETION_TOKENS = 20


@dataclass
class JudgeRequest:
    model: str
    system: str
    prompt: str
    scores: list[float] | None  # what it answered; None: garbage or down

    @property
    def task(self) -> str:
        match = _TASK.search(self.prompt)
        return match.group(1) if match else ""

    @property
    def attempts(self) -> list[str]:
        """Each attempt's rendered text, in order."""
        parts = _ATTEMPT.split(self.prompt)
        return [parts[i + 1].split("\n\nScore every attempt")[0] for i in range(1, len(parts), 2)]


@dataclass
class ScriptedJudge:
    garbage_for: set[str] = field(default_factory=set)
    down: bool = False
    requests: list[JudgeRequest] = field(default_factory=list)

    def for_task(self, task: str) -> list[JudgeRequest]:
        return [r for r in self.requests if r.task == task]

    async def chat(self, request: Request) -> JSONResponse:
        body: dict[str, Any] = await request.json()
        messages = body["messages"]
        prompt = messages[-1]["content"]
        count = len(_ATTEMPT.findall(prompt))
        entry = JudgeRequest(body["model"], messages[0]["content"], prompt, None)
        self.requests.append(entry)
        if self.down:
            return JSONResponse({"error": "overloaded"}, status_code=503)
        if entry.task in self.garbage_for:
            reply = "These attempts are all interesting in their own way."
        else:
            entry.scores = [round((k + 1) / count, 4) for k in range(count)]
            scores = [
                {"attempt": k + 1, "score": s, "reason": "ok"} for k, s in enumerate(entry.scores)
            ]
            reply = json.dumps({"scores": scores})
        return JSONResponse(
            {
                "id": "judge-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS},
            }
        )


@dataclass
class LiveJudge:
    live: LiveServer
    script: ScriptedJudge

    @property
    def spec(self) -> str:
        """The judge as a train config names it: NAME@URL."""
        return f"judge-model@{self.live.url}/v1"


@contextmanager
def scripted_judge(script: ScriptedJudge | None = None) -> Iterator[LiveJudge]:
    script = script or ScriptedJudge()
    app = Starlette(routes=[Route("/v1/chat/completions", script.chat, methods=["POST"])])
    live = start_server(app)
    try:
        yield LiveJudge(live, script)
    finally:
        live.stop()
