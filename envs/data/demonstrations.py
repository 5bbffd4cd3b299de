"""Demonstration episodes: the scripted oracle plays rows through a real environment.

A demonstration is an ordinary episode of the environment (its tools over the wire, its
grader at the end) whose actions come from `oracle_plan`: search for the figure; answer at
once when the top result states it (a single-figure row that does not require `read`);
otherwise read each evidence
document (following its paging notes until the figure shows up) and answer with
`oracle_answer_from_texts`. By default only episodes the grader scores 1.0 are kept, so what
a policy is fine-tuned on is the environment's own transcript, and it is right.

A warm start that is always right leaves reinforcement learning nothing to choose between. With
`misread_share` a seeded share of the single-search demonstrations answer with the figure in
the column next to the right one (a statement's prior-period column: a real analyst's slip),
and keep the grader's verdict on it. A policy fine-tuned on that mix can copy a figure from a
tool result but reads the wrong column about that often; the grader's reward is what tells
the two apart.

    async with ... as env:
        demo = await demonstrate(env, row)
    demo.messages, demo.tools   # the conversation and the tool specs it was played with
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tqdm import tqdm

from envs.data.oracle import (
    OracleError,
    next_read_offset,
    oracle_answer_from_texts,
    oracle_plan,
    recipe_of,
)
from envs.data.rows import Row
from envs.record import EpisodeRecord
from envs.tool_env import ToolEnv

__all__ = ["Demonstration", "DemonstrationError", "demonstrate", "record_demonstrations"]

MAX_PAGES = 4
_FIGURE = re.compile(r"\d[\d,]*(?:\.\d+)?")


class DemonstrationError(RuntimeError):
    """The oracle could not finish a row (the documents do not state what it needs)."""


class Demonstration(BaseModel):
    row_id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    reward: float
    misread: bool = False  # answered from the neighbouring column on purpose (see above)


def _call(name: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }


async def _step(env: ToolEnv, action: dict[str, Any]) -> str:
    observation, _, terminated, truncated, _ = await env.astep(action)
    if terminated or truncated:
        raise DemonstrationError(f"row {env.record.row_id}: {_ended_early(env.record)}")
    return str(observation[0]["content"])


def _ended_early(record: EpisodeRecord) -> str:
    """Why a demonstration stopped before its answer: the tool server, or a budget."""
    if record.infra_error:
        return f"the tool server failed: {record.infra_error}"
    return (
        f"the episode ended early (turn {record.turns}, {len(record.calls)} calls, "
        f"{record.tokens} tokens)"
    )


def stated_in_top_result(row: Row, search_output: str) -> bool:
    """Whether the first hit's snippet shows the row's one reference figure."""
    if not isinstance(row.reference_answer, str):
        return False
    figures = _FIGURE.findall(row.reference_answer)
    lines = search_output.splitlines()
    if len(recipe_of(row).facts) != 1 or len(figures) != 1 or len(lines) < 2:
        return False
    return figures[0] in _FIGURE.findall(lines[1])


def neighbouring_figure(row: Row, search_output: str) -> str | None:
    """The figure in the column after the row's reference figure in the top hit's snippet
    (`Revenue | 12.9 | 14.1`: 14.1, the prior period), or None when there is no such column."""
    figures = _FIGURE.findall(str(row.reference_answer))
    lines = search_output.splitlines()
    if len(figures) != 1 or len(lines) < 2:
        return None
    after = re.search(re.escape(figures[0]) + r"\)?\s*\|\s*\(?(" + _FIGURE.pattern + ")", lines[1])
    return after.group(1) if after else None


def misread_answer(row: Row, search_output: str) -> str | None:
    """The reference answer with its figure replaced by the neighbouring column's."""
    neighbour = neighbouring_figure(row, search_output)
    figure = _FIGURE.findall(str(row.reference_answer))
    if neighbour is None or neighbour == figure[0]:
        return None
    return str(row.reference_answer).replace(figure[0], neighbour, 1)


async def demonstrate(
    env: ToolEnv, row: Row, *, top_k: int = 3, read: bool = True, misread: bool = False
) -> Demonstration:
    """Play `row` with the oracle's actions; the environment runs the tools and grades.

    With `read=False` only rows the top search result answers are demonstrated (the others
    raise `DemonstrationError`). With `misread` the answer is the neighbouring column's figure
    (see the module's docstring) and the episode keeps whatever the grader gives it."""
    await env.areset(options={"row_id": row.id})
    tools = list(env.record.tools)
    plan = oracle_plan(row)
    # one search shows the policy how to look things up
    found = await _step(env, _call("search", {"query": plan.queries[0], "top_k": top_k}, "call_1"))
    # answering from the search result alone is right only for rows that do not require a read
    may_skip_read = "read" not in row.expected.must_use_tools
    answer = (
        str(row.reference_answer) if may_skip_read and stated_in_top_result(row, found) else None
    )
    if answer is None and not read:
        raise DemonstrationError(f"row {row.id}: the top search result does not state it")
    wrong = misread_answer(row, found) if answer is not None and misread else None
    if wrong is not None:  # (a row without a neighbouring column is demonstrated right)
        return await _answer(env, row, wrong, tools, misread=True)
    if answer is None:
        answer = await _read_and_answer(env, row, plan.paths)
    return await _answer(env, row, answer, tools)


async def _read_and_answer(env: ToolEnv, row: Row, paths: list[str]) -> str:
    calls = 1
    texts: dict[str, str] = {}
    answer = None
    for path in paths:
        arguments: dict[str, Any] = {"path": path}
        for _ in range(MAX_PAGES):
            calls += 1
            part = await _step(env, _call("read", arguments, f"call_{calls}"))
            texts[path] = texts.get(path, "") + part
            try:
                answer = oracle_answer_from_texts(row, texts)
                break
            except OracleError:
                offset = next_read_offset(part)
                if offset is None:
                    break
                arguments = {"path": path, "offset": offset}
    if answer is None:
        raise DemonstrationError(f"row {row.id}: the documents read do not give the answer")
    return answer


async def _answer(
    env: ToolEnv, row: Row, answer: str, tools: list[dict[str, Any]], *, misread: bool = False
) -> Demonstration:
    _, reward, terminated, _, _ = await env.astep(
        {"role": "assistant", "content": f"Answer: {answer}"}
    )
    if not terminated or (reward < 1.0 and not misread):
        grade = env.record.grade
        verdict = grade.model_dump(mode="json") if grade else None
        raise DemonstrationError(f"row {row.id}: graded {reward} ({verdict})")
    assert env.episode is not None
    messages = [dict(m) for m in env.episode.state.messages]
    return Demonstration(
        row_id=row.id, messages=messages, tools=tools, reward=reward, misread=misread
    )


async def record_demonstrations(
    env: ToolEnv,
    rows: Iterable[Row],
    out: Path,
    *,
    top_k: int = 3,
    read: bool = True,
    misread_share: float = 0.0,
    seed: int = 0,
) -> tuple[int, list[str]]:
    """Write one JSONL line per demonstrated row; returns (written, problems). A share
    `misread_share` of the rows, drawn with `seed`, is demonstrated misread (see above)."""
    if not 0.0 <= misread_share <= 1.0:
        raise ValueError(f"misread_share must be within [0, 1], not {misread_share}")
    draw = random.Random(seed)
    problems: list[str] = []
    written = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    with out.open("w") as handle:
        for row in tqdm(rows, desc="demonstrations", unit="episode", leave=False):
            try:
                misread = draw.random() < misread_share
                demo = await demonstrate(env, row, top_k=top_k, read=read, misread=misread)
            except (DemonstrationError, OracleError) as exc:
                problems.append(str(exc))
                continue
            handle.write(demo.model_dump_json() + "\n")
            written += 1
    return written, problems


def read_demonstrations(path: Path) -> list[Demonstration]:
    with path.open() as handle:
        return [Demonstration.model_validate_json(line) for line in handle if line.strip()]
