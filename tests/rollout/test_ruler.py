"""RULER: robust parsing of a group judgement, blending with the grader, caching, failures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from envs.data.rows import Row, RowMetadata
from envs.graders.judge import JudgeConfig, JudgeGrader
from rollout.engine import check_labels
from rollout.errors import RolloutConfigError
from rollout.ruler import RulerConfig, RulerScorer, parse_judge, parse_scores, render_prompt
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
    assert all(t.failed and t.judge_failed and t.reward is None for t in group)
    assert group[0].error is not None and "judge unavailable" in group[0].error.message


def test_grader_only_fallback_keeps_the_grader_reward(tmp_path: Path) -> None:
    group = [attempt(0, "1", 1.0), attempt(1, "2", 0.0)]
    fake = FakeJudge(["no idea", "still no idea"])  # asked again once (max_retries=1)
    ruler = scorer(fake, tmp_path, on_error="grader_only")
    asyncio.run(ruler.score_group(type("Row", (), {"prompt": "q"})(), group))
    assert [t.reward for t in group] == [1.0, 0.0]
    assert not any(t.failed for t in group)
    assert ruler.stats.failed_groups == 1 and len(fake.prompts) == 2


def test_garbage_is_asked_again_and_never_cached(tmp_path: Path) -> None:
    good = '{"scores": [0.2, 0.9]}'
    fake = FakeJudge(["I like both.", good])
    ruler = scorer(fake, tmp_path)
    group = [attempt(0, "1", 1.0), attempt(1, "2", 0.0)]
    asyncio.run(ruler.score_group(type("Row", (), {"prompt": "q"})(), group))
    assert [t.reward for t in group] == [0.2, 0.9]  # weight 1: the judge alone
    assert ruler.stats.calls == 2 and ruler.stats.failed_groups == 0
    cached = [
        json.loads(line)["reply"] for line in (tmp_path / "cache.jsonl").read_text().splitlines()
    ]
    assert cached == [good]  # a resumed run would ask about garbage again, not reuse it


def test_garbage_after_the_retries_fails_the_group_with_a_judge_error(tmp_path: Path) -> None:
    fake = FakeJudge(["no scores here", "nor here"])
    ruler = scorer(fake, tmp_path)
    group = [attempt(0, "1", 1.0), attempt(1, "2", 0.0)]
    asyncio.run(ruler.score_group(type("Row", (), {"prompt": "q"})(), group))
    assert all(t.judge_failed and t.reward is None for t in group)
    assert group[0].error is not None and "2 tries" in group[0].error.message
    assert ruler.take_stats().failed_groups == 1 and ruler.stats.failed_groups == 0


def test_attempts_are_shown_in_sample_order_whatever_finished_first(tmp_path: Path) -> None:
    reply = '{"scores": [0.1, 0.8]}'
    first = scorer(FakeJudge([reply]), tmp_path)
    group = [attempt(1, "late", 0.0), attempt(0, "early", 0.0)]  # finished out of order
    asyncio.run(first.score_group(type("Row", (), {"prompt": "q"})(), group))
    assert {t.sample_index: t.reward for t in group} == {0: 0.1, 1: 0.8}
    again = scorer(FakeJudge([]), tmp_path)  # the same group in the other order: cached
    ordered = [attempt(0, "early", 0.0), attempt(1, "late", 0.0)]
    asyncio.run(again.score_group(type("Row", (), {"prompt": "q"})(), ordered))
    assert again.calls == 0 and again.stats.cache_hits == 1
    assert [t.reward for t in ordered] == [0.1, 0.8]


def test_a_rubric_is_appended_to_the_criteria() -> None:
    plain = render_prompt("task?", [attempt(0, "x", 1.0)])
    ruled = render_prompt("task?", [attempt(0, "x", 1.0)], "Prefer {braced} answers.")
    assert "Also judge by these criteria:\nPrefer {braced} answers.\nReply with JSON" in ruled
    assert "criteria:" not in plain
    assert ruled.replace("Also judge by these criteria:\nPrefer {braced} answers.\n", "") == plain


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("judge@http://127.0.0.1:8001/v1", ("judge", "http://127.0.0.1:8001/v1")),
        ("org/model@http://h:1/", ("org/model", "http://h:1/v1")),  # the root or its /v1
    ],
)
def test_a_judge_is_named_as_a_served_policy(text: str, expected: tuple[str, str]) -> None:
    assert parse_judge(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("judge", "write NAME@URL"),
        ("@http://h:1", "NAME before '@' is missing"),
        ("j@http://a:1,http://b:2", "one judge server"),
        ("a@b@https://h/v1", "must start with http"),
    ],
)
def test_a_bad_judge_spelling_says_how_to_write_it(text: str, message: str) -> None:
    with pytest.raises(RolloutConfigError, match=message):
        parse_judge(text)


def test_rows_without_answers_need_a_judge_alone(tmp_path: Path) -> None:
    rows = [
        Row(id="a", prompt="p", metadata=RowMetadata(task_type="t", difficulty="easy")),
        Row(
            id="b",
            prompt="p",
            reference_answer="1",
            metadata=RowMetadata(task_type="t", difficulty="easy"),
        ),
    ]
    with pytest.raises(RolloutConfigError, match="1 of 2 rows have no reference_answer"):
        check_labels(rows, None)
    with pytest.raises(RolloutConfigError, match="1 of 2 rows"):
        check_labels(rows, scorer(FakeJudge([]), tmp_path, weight=0.5))
    check_labels(rows, scorer(FakeJudge([]), tmp_path, weight=1.0))  # the judge alone: fine
    check_labels(rows[1:], None)  # labelled rows need no judge


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
