"""ToolEnv against a real tool server: an oracle earns full reward, the rules hold, and
nothing a model sends can raise."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the environments)
from envs.data.build import build_dataset
from envs.data.oracle import oracle_answer_from_texts, oracle_plan
from envs.data.rows import Row, load_rows
from envs.tool_env import ToolEnv, make_tool_env
from testkit import TOKENS, LiveServer, free_port, start_server
from toolservers.auth import TokenSet
from toolservers.http_app import create_http_app
from toolservers.tools import Toolbox

_CONTINUE = re.compile(r"offset=(\d+)\)\.\]$")


@pytest.fixture(scope="module")
def dataset(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dataset")
    build_dataset(corpus_dir, out, seed=0)
    return out


def call(name: str, turn: int, **arguments: Any) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": f"c{turn}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }


def answer(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def play_oracle(env: gym.Env[Any, Any], row: Row) -> tuple[float, dict[str, Any]]:
    """Search, read every evidence document to its end, then answer from the text read."""
    env.reset(seed=0, options={"row_id": row.id})
    plan = oracle_plan(row)
    turn = 0
    obs, *_ = env.step(call("search", turn, query=plan.queries[0], top_k=5))
    texts: dict[str, str] = {}
    for path in plan.paths:
        parts, offset = [], 0
        for _ in range(50):  # bounded: a read that never reaches the end must fail, not loop
            turn += 1
            obs, _, terminated, truncated, _ = env.step(
                call("read", turn, path=path, offset=offset)
            )
            assert not (terminated or truncated)
            output = obs[0]["content"]
            parts.append(output)
            more = _CONTINUE.search(output)
            if not more:
                break
            assert int(more.group(1)) > offset, output[-200:]  # each page moves on
            offset = int(more.group(1))
        else:
            raise AssertionError(f"reading {path} did not end after {len(parts)} pages")
        texts[path] = "".join(parts)
    final = oracle_answer_from_texts(row, texts)
    _, reward, terminated, truncated, info = env.step(answer(f"Answer: {final}"))
    assert terminated and not truncated
    return float(reward), info


def test_oracle_gets_full_reward_on_every_val_row(dataset: Path, http_server: LiveServer) -> None:
    env = gym.make(
        "toolgym/FilingsQA-v0",
        dataset=str(dataset / "val.jsonl"),
        tools_url=http_server.url,
        token=TOKENS[0],
    )
    rows = load_rows(dataset / "val.jsonl")
    failures = []
    for row in rows:
        reward, info = play_oracle(env, row)
        if reward != 1.0:
            failures.append((row.id, row.reference_answer, info["grade"]))
        assert set(row.expected.must_use_tools) <= set(info["tools_used"])
    env.close()
    assert not failures, failures[:5]
    assert len(rows) >= 60


def test_answering_without_tools_is_penalised(dataset: Path, http_server: LiveServer) -> None:
    env = make_tool_env(dataset / "val.jsonl", http_server.url, TOKENS[0])
    row = next(r for r in load_rows(dataset / "val.jsonl") if r.expected.must_use_tools)
    env.reset(options={"row_id": row.id})
    reference = row.answers()[0]
    _, reward, terminated, _, info = env.step(answer(f"Answer: {reference}"))
    env.close()
    assert terminated
    assert reward < 1.0  # the right answer, but no evidence was looked at
    assert info["tools_used"] == []
    assert info["grade"]["details"]["tool_use"]["missing"] == sorted(row.expected.must_use_tools)


def test_reset_gives_the_question_and_the_tool_specs(
    dataset: Path, http_server: LiveServer
) -> None:
    env = make_tool_env(dataset / "val.jsonl", http_server.url, TOKENS[0])
    row = load_rows(dataset / "val.jsonl")[3]
    obs, info = env.reset(seed=1, options={"row_id": row.id})
    env.close()
    assert [m["role"] for m in obs] == ["system", "user"]
    assert obs[1]["content"] == row.prompt
    assert [t["function"]["name"] for t in info["tools"]] == ["search", "list", "read"]


def test_malformed_actions_are_observations_that_cost_budget(
    dataset: Path, http_server: LiveServer
) -> None:
    env = make_tool_env(
        dataset / "val.jsonl",
        http_server.url,
        TOKENS[0],
        limits={"max_tool_calls": 4, "max_turns": 10},
    )
    env.reset(seed=0)
    bad_json = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "x", "function": {"name": "read", "arguments": "{oops"}}],
    }
    obs, _reward, terminated, truncated, info = env.step(bad_json)
    assert "not valid JSON" in obs[0]["content"] and not (terminated or truncated)
    obs, *_ = env.step(call("delete_everything", 1))
    assert obs[0]["content"].startswith("Error: unknown tool")
    obs, *_ = env.step("")
    assert obs[0]["content"].startswith("Error: the message is empty")
    obs, *_ = env.step(
        '<tool_call>{"name": "list", "arguments": {"prefix": "filings/apex"}}</tool_call>'
    )
    assert obs[0]["content"].startswith("16 documents under 'filings/apex'")
    assert not obs[0]["content"].startswith("Error")
    _, _, terminated, truncated, info = env.step(call("list", 5))
    env.close()
    assert truncated and not terminated  # the fifth call is over the budget of four
    assert len(info["tool_calls"]) == 4


def test_turn_limit_truncates(dataset: Path, http_server: LiveServer) -> None:
    env = make_tool_env(dataset / "val.jsonl", http_server.url, TOKENS[0], limits={"max_turns": 2})
    env.reset(seed=0)
    assert env.step(call("list", 0))[3] is False
    assert env.step(call("list", 1))[3] is True
    env.close()


def test_dead_server_is_an_infrastructure_error_not_a_reward(dataset: Path) -> None:
    env = make_tool_env(dataset / "val.jsonl", f"http://127.0.0.1:{free_port()}", "t")
    with pytest.raises(Exception, match="failed 3 times"):
        env.reset(seed=0)  # the tool specs cannot even be fetched
    env.close()
    rows = load_rows(dataset / "val.jsonl")
    env = ToolEnv(
        rows[:1],
        make_tool_env(dataset / "val.jsonl", "http://x").grader,
        lambda: make_dead_client(),
        limits=None,
    )
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(call("search", 0, query="x"))
    env.close()
    assert truncated and not terminated and reward == 0.0
    assert "failed" in info["infra_error"]


def make_dead_client() -> Any:
    from envs.client import HttpToolClient, RetryPolicy

    client = HttpToolClient(
        f"http://127.0.0.1:{free_port()}", "t", retry=RetryPolicy(attempts=2, backoff_s=0.01)
    )
    client._specs = [{"type": "function", "function": {"name": "search", "parameters": {}}}]
    return client


def test_asgi_transport_and_async_path_share_the_rules(dataset: Path, toolbox: Toolbox) -> None:
    app = create_http_app(toolbox, TokenSet(TOKENS))
    env = make_tool_env(dataset / "val.jsonl", token=TOKENS[0], asgi_app=app)
    row = load_rows(dataset / "val.jsonl")[0]

    async def run() -> dict[str, Any]:
        await env.areset(seed=0, options={"row_id": row.id})
        obs, *_ = await env.astep(call("search", 0, query=row.prompt))
        assert "(score " in obs[0]["content"]
        *_, info = await env.astep(answer("I do not know"))
        await env.aclose()
        return info

    info = asyncio.run(run())
    assert info["grade"]["score"] == 0.0
    assert info["tools_used"] == ["search"]


def test_check_env_passes_on_every_registered_env(dataset: Path, http_server: LiveServer) -> None:
    ids = [env_id for env_id in gym.registry if env_id.startswith("toolgym/")]
    assert {"toolgym/FilingsQA-v0", "toolgym/TatQA-v0"} <= set(ids)
    for env_id in ids:
        env = gym.make(
            env_id, dataset=str(dataset / "val.jsonl"), tools_url=http_server.url, token=TOKENS[0]
        )
        check_env(env.unwrapped)
        for _ in range(30):  # random actions, including garbage, never raise
            env.reset()
            for _ in range(3):
                *_, terminated, truncated, _ = env.step(env.action_space.sample())
                if terminated or truncated:
                    break
        env.close()


def test_mcp_transport_plays_the_same_episode(
    dataset: Path, corpus_dir: Path, toolbox: Toolbox
) -> None:
    from toolservers.mcp_app import create_mcp_app

    live = start_server(create_mcp_app(toolbox, TokenSet(TOKENS)))
    try:
        env = gym.make(
            "toolgym/FilingsQA-v0",
            dataset=str(dataset / "val.jsonl"),
            tools_url=live.url,
            token=TOKENS[1],
            transport="mcp",
        )
        row = load_rows(dataset / "val.jsonl")[0]
        reward, _info = play_oracle(env, row)
        env.close()
    finally:
        live.stop()
    assert reward == 1.0
