"""Demonstration episodes: the scripted oracle plays rows through a real environment.

A demonstration is an ordinary episode of the environment (its tools over the wire, its
grader at the end) whose actions come from `oracle_plan`: search for the figure; answer at
once when the top result states it (a single-figure row that does not require `read`);
otherwise read each evidence
document (following its paging notes until the figure shows up) and answer with
`oracle_answer_from_texts`. By default only episodes the grader scores 1.0 are kept, so what
a policy is fine-tuned on is the environment's own transcript, and it is right.

A warm start that is always right leaves reinforcement learning nothing to choose between. With
`scale_slips` every single-search row whose answer is stated in millions is demonstrated twice:
once right, and once with the scale misread ("$123.6 thousand": a statement's "(in millions)"
overlooked, a real analyst's slip), graded as it is. Both copy the same figure, so what the
policy learns to copy is never ambiguous (answers mixing the digits of two columns are what an
earlier design, answering from the prior-period column, taught a small model); only the unit
after the figure is a coin flip, and the grader's reward is what tells the two apart.

    async with ... as env:
        demo = await demonstrate(env, row)
    demo.messages, demo.tools   # the conversation and the tool specs it was played with
"""

from __future__ import annotations

import json
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
    slip: bool = False  # the scale misread on purpose (see above)


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


def scale_slip(answer: str) -> str | None:
    """`answer` with its scale misread, millions taken for thousands; None for an answer that
    states no millions (a percentage, a ratio)."""
    if " million" not in answer:
        return None
    return answer.replace(" million", " thousand", 1)


async def demonstrate(
    env: ToolEnv, row: Row, *, top_k: int = 3, read: bool = True, slip: bool = False
) -> Demonstration:
    """Play `row` with the oracle's actions; the environment runs the tools and grades.

    With `read=False` only rows the top search result answers are demonstrated (the others
    raise `DemonstrationError`). With `slip` the answer's scale is misread (see the module's
    docstring; `DemonstrationError` for an answer without one) and the episode keeps whatever
    the grader gives it."""
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
    if answer is None:
        answer = await _read_and_answer(env, row, plan.paths)
    if not slip:
        return await _answer(env, row, answer, tools)
    slipped = scale_slip(answer)
    if slipped is None:
        raise DemonstrationError(f"row {row.id}: its answer {answer!r} has no scale to misread")
    return await _answer(env, row, slipped, tools, slip=True)


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
    env: ToolEnv, row: Row, answer: str, tools: list[dict[str, Any]], *, slip: bool = False
) -> Demonstration:
    _, reward, terminated, _, _ = await env.astep(
        {"role": "assistant", "content": f"Answer: {answer}"}
    )
    if not terminated or (reward < 1.0 and not slip):
        grade = env.record.grade
        verdict = grade.model_dump(mode="json") if grade else None
        raise DemonstrationError(f"row {row.id}: graded {reward} ({verdict})")
    assert env.episode is not None
    messages = [dict(m) for m in env.episode.state.messages]
    return Demonstration(row_id=row.id, messages=messages, tools=tools, reward=reward, slip=slip)


async def record_demonstrations(
    env: ToolEnv,
    rows: Iterable[Row],
    out: Path,
    *,
    top_k: int = 3,
    read: bool = True,
    scale_slips: bool = False,
) -> tuple[int, list[str]]:
    """Write one JSONL line per demonstration; returns (written, problems). With `scale_slips`
    a row whose answer has a scale is demonstrated a second time, slipped (see above)."""
    problems: list[str] = []
    written = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for row in tqdm(list(rows), desc="demonstrations", unit="episode", leave=False):
            try:
                demos = [await demonstrate(env, row, top_k=top_k, read=read)]
            except (DemonstrationError, OracleError) as exc:
                problems.append(str(exc))
                continue
            if scale_slips and scale_slip(str(row.reference_answer)) is not None:
                demos.append(await demonstrate(env, row, top_k=top_k, read=read, slip=True))
            for demo in demos:
                handle.write(demo.model_dump_json() + "\n")
            written += len(demos)
    return written, problems


def read_demonstrations(path: Path) -> list[Demonstration]:
    with path.open() as handle:
        return [Demonstration.model_validate_json(line) for line in handle if line.strip()]
