"""The episode's typed record: what the rollout reads, and what Gymnasium's `info` is made of.

A third party's tool server (the tool HTTP contract, in-process over ASGI) answers with fixed
bodies: a normal answer that reads "Error: none found", a flagged refusal, and a crash (HTTP
500, an infrastructure failure). Episodes are played through a real environment and the real
grader; the rollout path is played with a scripted policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse

from envs.client import RetryPolicy, make_tool_client
from envs.data.rows import Row, RowMetadata
from envs.grading import episode_grader
from envs.record import EpisodeRecord
from envs.tool_env import ToolEnv
from rollout.play import EpisodeJob, play_episode
from rollout.policy import SamplingParams, Turn, TurnRequest
from testkit import text_tool_spec, tool_contract_app

NONE_FOUND = "Error: none found"  # a normal answer that happens to start with "Error"
REFUSAL = "not allowed"
SPECS = [text_tool_spec(name, "Look a name up.") for name in ("lookup", "refuse", "crash")]


def answer_for(name: str, body: dict[str, Any]) -> JSONResponse:
    if name == "crash":
        return JSONResponse({"detail": "boom"}, status_code=500)
    if name == "refuse":
        return JSONResponse({"output": REFUSAL, "is_error": True})
    return JSONResponse({"output": NONE_FOUND})  # no flag: the older contract, a success


def third_party_app() -> Starlette:
    return tool_contract_app(SPECS, answer_for)


def row(row_id: str = "r1", tools: list[dict[str, Any]] | None = None) -> Row:
    return Row(
        id=row_id,
        prompt="What is the answer?",
        reference_answer="42",
        tools=tools or [],
        metadata=RowMetadata(task_type="lookup", difficulty="easy"),
    )


def make_env(*rows: Row) -> ToolEnv:
    app = third_party_app()
    # One attempt: the crashing tool is an infrastructure error at once, not after backoff.
    retry = RetryPolicy(attempts=1, backoff_s=0.0)
    return ToolEnv(
        list(rows) or [row()],
        episode_grader(),
        lambda: make_tool_client(None, asgi_app=app, retry=retry),
    )


def calls(*names: str) -> dict[str, Any]:
    arguments = json.dumps({"text": "Jane"})
    tool_calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, name in enumerate(names)
    ]
    return {"role": "assistant", "content": "", "tool_calls": tool_calls}


def say(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def test_record_has_the_calls_with_their_flags_the_answer_and_the_grade() -> None:
    env = make_env()
    try:
        _, reset_info = env.reset(seed=0)
        offered = env.record
        *_, info = env.step(calls("lookup", "refuse"))
        _, reward, terminated, truncated, final_info = env.step(say("Answer: 42"))
        record = env.record
    finally:
        env.close()
    assert offered.tool_names == ["lookup", "refuse", "crash"]
    assert offered.calls == () and offered.answer is None and offered.grade is None
    assert reset_info == offered.as_info(with_tools=True)
    assert reset_info["tools"] == SPECS
    assert [(c.name, c.ok, c.output) for c in record.calls] == [
        ("lookup", True, NONE_FOUND),  # its text starts with "Error", its flag says success
        ("refuse", False, REFUSAL),
    ]
    assert record.tools_used == ["lookup"] and record.tool_errors == 1
    assert record.answer == "Answer: 42"
    assert record.grade is not None and record.grade.score == 1.0 == reward
    assert terminated and not truncated
    assert record.infra_error is None and record.grader_error is None
    assert final_info == record.as_info()
    assert json.loads(json.dumps(final_info)) == final_info  # JSON-friendly, as Gymnasium's
    # A record is a snapshot: the one read mid-episode has the calls and no answer yet.
    assert info["tool_calls"] == final_info["tool_calls"] and info["answer"] is None


def test_info_keeps_its_keys_for_gymnasium_users() -> None:
    env = make_env()
    try:
        env.reset(seed=0)
        *_, info = env.step(calls("lookup"))
    finally:
        env.close()
    assert set(info) >= {
        "row_id",
        "turns",
        "tokens",
        "tool_calls",
        "tools_used",
        "documents_read",
        "grade",
        "grader_error",
        "infra_error",
    }
    assert info["tool_calls"] == [
        {
            "id": "c0",
            "name": "lookup",
            "arguments": {"text": "Jane"},
            "ok": True,
            "latency_s": info["tool_calls"][0]["latency_s"],
        }
    ]
    assert info["row_id"] == "r1" and info["tools_used"] == ["lookup"]


def test_a_failing_tool_server_lands_in_record_infra_error() -> None:
    env = make_env()
    try:
        env.reset(seed=0)
        _, reward, terminated, truncated, info = env.step(calls("crash"))
        record = env.record
    finally:
        env.close()
    assert truncated and not terminated and reward == 0.0
    assert record.infra_error is not None and "HTTP 500" in record.infra_error
    assert record.grade is None and record.answer is None
    assert info == record.as_info() and info["infra_error"] == record.infra_error


def test_the_record_is_frozen_and_needs_a_reset() -> None:
    env = make_env()
    with pytest.raises(gym.error.ResetNeeded):
        _ = env.record
    try:
        env.reset(seed=0)
        record = env.record
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.answer = "changed"  # type: ignore[misc]
    finally:
        env.close()


def test_a_rows_own_tools_are_the_ones_offered() -> None:
    own = [text_tool_spec("lookup", "Only this one.")]
    env = make_env(row("r2", tools=own))
    try:
        _, info = env.reset(seed=0)
    finally:
        env.close()
    assert env.record.tools == tuple(own) and info["tools"] == own


class ScriptedPolicy:
    """A policy whose turns are written in advance; it records the tools it was offered."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = list(messages)
        self.offered: list[list[dict[str, Any]]] = []

    @property
    def model(self) -> str:
        return "scripted"

    async def complete(self, request: TurnRequest) -> Turn:
        self.offered.append(request.tools)
        message = self.messages.pop(0)
        return Turn(message, [1, 2], [3], [0.0], "stop", "scripted", 0.001)

    async def publish_adapter(self, path: Path, version: str) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def play(env: ToolEnv, policy: ScriptedPolicy) -> Any:
    job = EpisodeJob(env.rows[0], "g", 0, seed=7)

    async def run() -> Any:
        try:
            return await play_episode(
                env, policy, job, env_id="acme/Record-v0", sampling=SamplingParams()
            )
        finally:
            await env.aclose()

    return asyncio.run(run())


def test_the_rollout_reads_the_trajectory_off_the_record() -> None:
    env = make_env()
    policy = ScriptedPolicy([calls("lookup", "refuse"), say("Answer: 42")])
    trajectory = play(env, policy)
    record: EpisodeRecord = env.record
    assert policy.offered == [SPECS, SPECS]
    assert trajectory.tools == ["lookup", "refuse", "crash"]
    assert trajectory.error is None and trajectory.reward == 1.0
    assert trajectory.answer == record.answer == "Answer: 42"
    assert trajectory.tools_used == ["lookup"]
    assert (trajectory.metrics.tool_calls, trajectory.metrics.tool_errors) == (2, 1)
    assert trajectory.metrics.tool_s == round(sum(c.latency_s for c in record.calls), 4)
    assert trajectory.grade == record.as_info()["grade"]
    assert trajectory.metadata == {"task_type": "lookup", "difficulty": "easy"}


def test_the_rollout_reports_a_tool_server_failure_from_the_record() -> None:
    env = make_env()
    trajectory = play(env, ScriptedPolicy([calls("crash")]))
    assert trajectory.error is not None and trajectory.error.kind == "tool"
    assert trajectory.error.message == env.record.infra_error
    assert trajectory.reward is None and trajectory.metrics.truncated
