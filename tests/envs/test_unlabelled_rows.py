"""Rows without a reference answer: they load, the environment never asks its grader about
them, and every grading path says so explicitly instead of crashing or making up a 0."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import JSONResponse

from envs.client import make_tool_client
from envs.data.rows import DatasetError, Row, RowMetadata, load_rows, write_rows
from envs.episode import UNGRADED_NOTE
from envs.graders import GradeResult, GraderInputError, grade_row, make_grader
from envs.graders.base import verdict_for
from envs.grading import episode_grader
from envs.tool_env import ToolEnv
from rollout.play import EpisodeJob, play_episode
from rollout.policy import SamplingParams, Turn, TurnRequest
from testkit import text_tool_spec, tool_contract_app

SPECS = [text_tool_spec("lookup", "Look a name up.")]
META = {"task_type": "explore", "difficulty": "easy"}


class CountingGrader:
    """An episode grader that records every row it is asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def grade(self, row: Row, answer: str, tools_used: set[str]) -> GradeResult:
        self.asked.append(row.id)
        return GradeResult(score=1.0, verdict=verdict_for(1.0))


def unlabelled(row_id: str = "u1") -> Row:
    metadata = RowMetadata(task_type="explore", difficulty="easy")
    return Row(id=row_id, prompt="Which tools exist?", tools=SPECS, metadata=metadata)


def make_env(grader: Any, *rows: Row) -> ToolEnv:
    app = tool_contract_app(SPECS, lambda name, body: JSONResponse({"output": "none"}))
    return ToolEnv(list(rows), grader, lambda: make_tool_client(None, asgi_app=app))


def test_rows_without_a_reference_answer_load_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    lines = [
        {"id": "a", "prompt": "p?", "reference_answer": "42", "metadata": META},
        {"id": "b", "prompt": "q?", "metadata": META},
        {"id": "c", "prompt": "r?", "reference_answer": None, "metadata": META},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = load_rows(path)
    assert [r.labelled for r in rows] == [True, False, False]
    assert rows[1].answers() == [] and rows[1].reference_answer is None
    write_rows(tmp_path / "out.jsonl", rows)
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert "reference_answer" not in written[1]  # left out, not written as null


def test_an_empty_reference_answer_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    line = {"id": "a", "prompt": "p", "reference_answer": " ", "metadata": META}
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DatasetError, match="reference_answer must be a non-empty"):
        load_rows(path)


def test_the_episode_does_not_ask_the_grader_about_an_unlabelled_row() -> None:
    grader = CountingGrader()
    env = make_env(grader, unlabelled())
    try:
        env.reset(options={"row_id": "u1"})
        _, reward, terminated, truncated, info = env.step({"role": "assistant", "content": "A: 2"})
    finally:
        env.close()
    assert grader.asked == []
    assert (terminated, truncated, reward) == (True, False, 0.0)  # 0.0: a placeholder
    assert info["note"] == UNGRADED_NOTE and info["grade"] is None
    assert info["grader_error"] is None and env.record.answer == "A: 2"


def test_a_labelled_row_is_still_graded() -> None:
    grader = CountingGrader()
    labelled = unlabelled("l1").model_copy(update={"reference_answer": "2"})
    env = make_env(grader, labelled)
    try:
        env.reset(options={"row_id": "l1"})
        _, reward, *_ = env.step({"role": "assistant", "content": "A: 2"})
    finally:
        env.close()
    assert grader.asked == ["l1"] and reward == 1.0


class Answers:
    """A policy that answers at once."""

    model = "scripted"

    async def complete(self, request: TurnRequest) -> Turn:
        message = {"role": "assistant", "content": "Answer: lookup"}
        return Turn(message, [1, 2], [3], [0.0], "stop", "scripted", 0.001)

    async def publish_adapter(self, path: Path, version: str) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def test_the_rollout_leaves_an_unlabelled_reward_to_the_judge() -> None:
    grader = CountingGrader()
    env = make_env(grader, unlabelled())

    async def play() -> Any:
        try:
            job = EpisodeJob(env.rows[0], "g", 0, seed=1)
            return await play_episode(env, Answers(), job, env_id="t", sampling=SamplingParams())
        finally:
            await env.aclose()

    trajectory = asyncio.run(play())
    assert grader.asked == []
    assert trajectory.reward is None and not trajectory.failed  # no reward yet, not a failure
    assert "grader" not in trajectory.scores and trajectory.grade is None
    assert trajectory.answer == "Answer: lookup"


def test_grading_an_unlabelled_row_directly_is_an_explicit_error() -> None:
    row = unlabelled()
    with pytest.raises(GraderInputError, match="'u1' has no reference_answer"):
        asyncio.run(grade_row(make_grader("auto"), row, "42"))
    with pytest.raises(GraderInputError, match="no reference_answer"):
        asyncio.run(episode_grader().grade(row, "42", set()))
