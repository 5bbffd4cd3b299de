"""RULER: robust parsing of a group judgement, blending with the grader, caching, failures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from envs.graders.judge import JudgeConfig, JudgeGrader
from rollout.ruler import RulerConfig, RulerScorer, parse_scores, render_prompt
from rollout.trajectory import Trajectory


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"scores": [{"attempt": 1, "score": 0.9}, {"attempt": 2, "score": 0.2}]}', [0.9, 0.2]),
        (
            'Sure!\n```json\n{"scores": [{"attempt": 2, "score": 0.1}, '
            '{"attempt": 1, "score": 1}]}\n```',
            [1.0, 0.1],
        ),
        ('{"scores": [0.3, 0.7]}', [0.3, 0.7]),
        ("Attempt 1: 8\nAttempt 2: 3", [0.8, 0.3]),  # out of 10, rescaled
        ("Trajectory 1 - score: 0.5\ntrajectory 2 = 1.4", [0.5 / 10, 1.4 / 10]),
    ],
)
def test_parse_scores(reply: str, expected: list[float]) -> None:
    assert parse_scores(reply, 2) == pytest.approx(expected)


@pytest.mark.parametrize(
    "reply", ['{"scores": [{"attempt": 1, "score": 0.9}]}', "I cannot judge this.", "Attempt 1: x"]
)
def test_a_reply_without_a_score_for_every_attempt_is_none(reply: str) -> None:
    assert parse_scores(reply, 2) is None


def attempt(index: int, answer: str, reward: float) -> Trajectory:
    return Trajectory(
        row_id="r",
        group_id="r",
        sample_index=index,
        env_id="e",
        policy_version="base",
        messages=[
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "What was revenue?"},
            {"role": "assistant", "content": f"Answer: {answer}"},
        ],
        reward=reward,
        scores={"grader": reward},
    )


class FakeJudge:
    """An OpenAI-compatible judge endpoint in-process; records the prompts it was sent."""

    def __init__(self, replies: list[str] | None = None, status: int = 200) -> None:
        self.replies = replies or []
        self.status = status
        self.prompts: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.prompts.append(body["messages"][-1]["content"])
        if self.status != 200:
            return httpx.Response(self.status)
        reply = self.replies[len(self.prompts) - 1]
        return httpx.Response(200, json={"choices": [{"message": {"content": reply}}]})


def scorer(fake: FakeJudge, tmp_path: Path, **config: Any) -> RulerScorer:
    judge_config = JudgeConfig(
        base_url="http://judge/v1", model="judge", max_retries=1, backoff_s=0.0
    )
    judge = JudgeGrader(judge_config, transport=httpx.MockTransport(fake))
    return RulerScorer(
        RulerConfig(judge=judge_config, cache_path=tmp_path / "cache.jsonl", **config), judge
    )


def test_group_scores_blend_with_the_grader_and_are_cached(tmp_path: Path) -> None:
    reply = '{"scores": [{"attempt": 1, "score": 1.0}, {"attempt": 2, "score": 0.5}]}'
    fake = FakeJudge([reply])
    group = [attempt(0, "$5 million", 1.0), attempt(1, "$6 million", 0.0)]
    ruler = scorer(fake, tmp_path, weight=0.5)
    row = type("Row", (), {"prompt": "What was revenue?"})()
    asyncio.run(ruler.score_group(row, group))
    assert [t.scores["ruler"] for t in group] == [1.0, 0.5]
    assert [t.reward for t in group] == [1.0, 0.25]
    assert "Attempt 2" in fake.prompts[0] and "$6 million" in fake.prompts[0]
    # The same group again (a re-score, or a fresh scorer reading the cache): no judge call.
    again = [attempt(0, "$5 million", 1.0), attempt(1, "$6 million", 0.0)]
    fresh = scorer(FakeJudge([]), tmp_path, weight=0.5)
    asyncio.run(fresh.score_group(row, again))
    assert fresh.calls == 0
    assert [t.reward for t in again] == [1.0, 0.25]


def test_an_unreachable_judge_marks_the_group_failed_not_zero(tmp_path: Path) -> None:
    group = [attempt(0, "1", 1.0), attempt(1, "2", 0.0)]
    ruler = scorer(FakeJudge(status=503), tmp_path)
    asyncio.run(ruler.score_group(type("Row", (), {"prompt": "q"})(), group))
    assert all(t.failed and t.reward is None for t in group)
    assert group[0].error is not None and "judge unavailable" in group[0].error.message


def test_grader_only_fallback_keeps_the_grader_reward(tmp_path: Path) -> None:
    group = [attempt(0, "1", 1.0), attempt(1, "2", 0.0)]
    ruler = scorer(FakeJudge(["no idea"]), tmp_path, on_error="grader_only")
    asyncio.run(ruler.score_group(type("Row", (), {"prompt": "q"})(), group))
    assert [t.reward for t in group] == [1.0, 0.0]
    assert not any(t.failed for t in group)


def test_the_prompt_shows_tool_calls_and_cut_tool_results() -> None:
    trajectory = attempt(0, "x", 1.0)
    trajectory.messages[2:2] = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "read", "arguments": '{"path": "a.html"}'}}],
        },
        {"role": "tool", "name": "read", "content": "y" * 5000},
    ]
    prompt = render_prompt("task?", [trajectory])
    assert 'read({"path": "a.html"})' in prompt
    assert "y" * 300 in prompt and "y" * 301 not in prompt
