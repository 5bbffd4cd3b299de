"""Demonstration episodes: the oracle plays rows through the real environment and server."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from envs.data.build import build_dataset
from envs.data.demonstrations import (
    Demonstration,
    DemonstrationError,
    demonstrate,
    read_demonstrations,
    record_demonstrations,
    scale_slip,
    stated_in_top_result,
)
from envs.data.rows import Row, load_rows
from envs.tool_env import make_tool_env
from testkit import TOKENS, LiveServer


@pytest.fixture(scope="module")
def lookups(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Row]:
    out = tmp_path_factory.mktemp("lookups")
    build_dataset(corpus_dir, out, seed=1, counts={"lookup": 40})
    return load_rows(out / "train.jsonl")[:12]


def test_every_lookup_is_demonstrated_with_full_reward(
    http_server: LiveServer, lookups: list[Row], tmp_path: Path
) -> None:
    env = make_tool_env(lookups, http_server.url, TOKENS[0])

    async def play() -> tuple[int, list[str]]:
        try:
            return await record_demonstrations(env, lookups, tmp_path / "demos.jsonl", top_k=3)
        finally:
            await env.aclose()

    written, problems = asyncio.run(play())
    assert (written, problems) == (len(lookups), [])
    demos = read_demonstrations(tmp_path / "demos.jsonl")
    assert [d.row_id for d in demos] == [row.id for row in lookups]
    for demo, row in zip(demos, lookups, strict=True):
        assert demo.reward == 1.0
        roles = [m["role"] for m in demo.messages]
        assert roles[:4] == ["system", "user", "assistant", "tool"]
        assert roles[-1] == "assistant" and demo.messages[-1]["content"].startswith("Answer: ")
        first_call = demo.messages[2]["tool_calls"][0]["function"]
        assert first_call["name"] == "search"
        assert json.loads(first_call["arguments"])["top_k"] == 3
        assert {t["function"]["name"] for t in demo.tools} == {"search", "list", "read"}
        # these rows require `read`: never answered from the search result alone
        assert "read" in row.expected.must_use_tools and "read" in str(demo.messages[4])


def test_without_reads_only_rows_the_search_answers_are_demonstrated(
    mcp_server: LiveServer, lookups: list[Row]
) -> None:
    # rows that only require `search` (as the demo's rows do)
    lookups = [
        row.model_copy(
            update={"expected": row.expected.model_copy(update={"must_use_tools": ["search"]})}
        )
        for row in lookups
    ]
    env = make_tool_env(lookups, mcp_server.url + "/mcp", TOKENS[0], transport="mcp")

    async def play() -> list[str]:
        outcomes = []
        try:
            for row in lookups:
                try:
                    demo = await demonstrate(env, row, top_k=1, read=False)
                except DemonstrationError as exc:
                    assert "does not state it" in str(exc)
                    outcomes.append("skipped")
                    continue
                assert len(demo.messages) == 5 and demo.reward == 1.0
                assert stated_in_top_result(row, demo.messages[3]["content"])
                figure = re.findall(r"\d[\d,]*(?:\.\d+)?", str(row.reference_answer))[0]
                assert figure in demo.messages[3]["content"].splitlines()[1]
                outcomes.append("answered")
        finally:
            await env.aclose()
        return outcomes

    outcomes = asyncio.run(play())
    assert "answered" in outcomes  # the snippets start at the row asked about


def test_scale_slips_copy_the_same_figure_and_keep_their_grade(
    http_server: LiveServer, lookups: list[Row], tmp_path: Path
) -> None:
    # rows that only require `search` (as the demo's rows do), played with and without slips
    lookups = [
        row.model_copy(
            update={"expected": row.expected.model_copy(update={"must_use_tools": ["search"]})}
        )
        for row in lookups
    ]
    env = make_tool_env(lookups, http_server.url, TOKENS[0])

    async def play(slips: bool, name: str) -> list[Demonstration]:
        try:
            await record_demonstrations(
                env, lookups, tmp_path / name, top_k=1, read=False, scale_slips=slips
            )
        finally:
            await env.aclose()
        return read_demonstrations(tmp_path / name)

    right = asyncio.run(play(False, "right.jsonl"))
    mixed = asyncio.run(play(True, "mixed.jsonl"))
    assert right and not any(d.slip for d in right)
    assert [d for d in mixed if not d.slip] == right  # the right ones are all still there
    slipped = [d for d in mixed if d.slip]
    in_millions = [d for d in right if scale_slip(d.messages[-1]["content"]) is not None]
    assert slipped and len(slipped) == len(in_millions), "each row in millions once slipped"
    by_row = {d.row_id: d for d in right}
    for demo in slipped:
        twin = by_row[demo.row_id]
        assert demo.messages[:-1] == twin.messages[:-1]  # the same search, the same result
        assert demo.messages[-1]["content"] == twin.messages[-1]["content"].replace(
            " million", " thousand", 1
        )
        assert demo.reward < 1.0  # the grader's verdict on the wrong scale, kept as it is
        assert twin.reward == 1.0


def test_scale_slip_misreads_millions_only() -> None:
    assert scale_slip("$1,234.5 million") == "$1,234.5 thousand"
    assert scale_slip("-$12.0 million") == "-$12.0 thousand"
    assert scale_slip("55.3%") is None
    assert scale_slip("1.25x") is None
