"""A tool call failed when its transport says so, whatever its text says.

Third-party tool servers run under a real uvicorn on 127.0.0.1 and are played through a real
environment episode: one MCP server over streamable HTTP, one speaking the tool HTTP contract
both with and without the `is_error` field. A normal answer that happens to read
"Error: none found" must count as a success, and a flagged error whose text does not start
with "Error" must count as a failure; either way the model sees the tool's text unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from starlette.applications import Starlette
from starlette.responses import JSONResponse

import envs
from testkit import (
    LiveServer,
    mcp_streamable_app,
    start_server,
    text_tool_spec,
    tool_contract_app,
)

pytestmark = pytest.mark.usefixtures("forget_new_envs")

NONE_FOUND = "Error: none found"  # a normal answer: the lookup found nothing
REFUSAL = "nothing by that name here"  # a real error, worded without the prefix

# name -> (the HTTP body the tool answers, whether the call failed). A body without
# `is_error` follows the older contract, under which an answer is a success.
HTTP_ANSWERS: dict[str, tuple[dict[str, Any], bool]] = {
    "lookup": ({"output": NONE_FOUND}, False),
    "lookup_flagged": ({"output": NONE_FOUND, "is_error": False}, False),
    "refuse_flagged": ({"output": REFUSAL, "is_error": True}, True),
    "refuse_unflagged": ({"output": REFUSAL}, False),
}


def http_tools_app() -> Starlette:
    """The tool HTTP contract with a fixed answer per tool, `is_error` given or not."""
    specs = [text_tool_spec(name, "Look a name up.") for name in HTTP_ANSWERS]
    return tool_contract_app(specs, lambda name, body: JSONResponse(HTTP_ANSWERS[name][0]))


def mcp_tools_app() -> Starlette:
    server = MCPServer(name="acme", log_level="WARNING")

    @server.tool()
    def lookup(text: str) -> str:
        """Look a name up."""
        return NONE_FOUND

    @server.tool()
    def refuse(text: str) -> CallToolResult:
        """Refuse to look anything up."""
        # A flagged result whose text is exactly REFUSAL, no "Error" anywhere in it.
        return CallToolResult(content=[TextContent(type="text", text=REFUSAL)], is_error=True)

    @server.tool()
    def fail(text: str) -> str:
        """Fail to look anything up."""
        # The SDK turns this into an is_error result reading "Error executing tool fail: ...".
        raise ToolError(REFUSAL)

    return mcp_streamable_app(server)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, LiveServer]]:
    found = {"http": start_server(http_tools_app()), "mcp": start_server(mcp_tools_app())}
    yield found
    for live in found.values():
        live.stop()


@pytest.fixture(autouse=True)
def acme_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_TOKEN", "acme-current")


def register(folder: Path, env_id: str, url: str, transport: str) -> str:
    row = {
        "id": "r1",
        "prompt": "Who is Acme's CEO?",
        "reference_answer": "42",
        "metadata": {"task_type": "lookup", "difficulty": "easy"},
    }
    rows = folder / "rows.jsonl"
    rows.write_text(json.dumps(row) + "\n")
    spec_ = {
        "id": env_id,
        "dataset": str(rows),
        "tools_url": url,
        "transport": transport,
        "token_env": "ACME_TOKEN",
    }
    path = folder / "env.yaml"
    path.write_text(json.dumps(spec_))  # JSON is YAML
    return envs.register_yaml(path)


def tool_call(index: int, name: str) -> dict[str, Any]:
    arguments = json.dumps({"text": "Jane"})
    return {
        "id": f"c{index}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def play(env_id: str, names: list[str]) -> tuple[list[str], list[bool], dict[str, Any]]:
    """One turn calling every tool in `names`, then an answer: the texts the model saw, each
    call's `ok` as the episode recorded it, and the final info."""
    env = gym.make(env_id)
    try:
        env.reset(seed=0)
        calls = [tool_call(i, name) for i, name in enumerate(names)]
        observation, *_ = env.step({"role": "assistant", "content": "", "tool_calls": calls})
        *_, info = env.step({"role": "assistant", "content": "Answer: 42"})
    finally:
        env.close()
    return [m["content"] for m in observation], [c["ok"] for c in info["tool_calls"]], info


def test_mcp_flags_decide_failure_and_the_text_passes_through(
    tmp_path: Path, servers: dict[str, LiveServer]
) -> None:
    env_id = register(tmp_path, "acme/FlagMcp-v0", servers["mcp"].url, "mcp")
    texts, ok, info = play(env_id, ["lookup", "refuse", "fail"])
    # No "Error: " prefix added to the refusal, none doubled on the SDK's own wording.
    assert texts == [NONE_FOUND, REFUSAL, f"Error executing tool fail: {REFUSAL}"]
    assert ok == [True, False, False]
    assert info["tools_used"] == ["lookup"]


def test_http_is_error_field_decides_failure_and_a_missing_one_means_success(
    tmp_path: Path, servers: dict[str, LiveServer]
) -> None:
    env_id = register(tmp_path, "acme/FlagHttp-v0", servers["http"].url, "http")
    names = list(HTTP_ANSWERS)
    texts, ok, info = play(env_id, names)
    assert texts == [HTTP_ANSWERS[name][0]["output"] for name in names]
    assert ok == [not HTTP_ANSWERS[name][1] for name in names]
    assert info["tools_used"] == sorted(n for n in names if not HTTP_ANSWERS[n][1])


def test_client_side_refusals_and_broken_actions_are_failures(
    tmp_path: Path, servers: dict[str, LiveServer]
) -> None:
    """Errors the client or the environment produce itself are flagged, not read off text."""
    env_id = register(tmp_path, "acme/FlagRefusals-v0", servers["http"].url, "http")
    env = gym.make(env_id)
    try:
        env.reset(seed=0)
        broken = {**tool_call(1, "lookup"), "function": {"name": "lookup", "arguments": "{"}}
        calls = [tool_call(0, "nope"), broken]
        observation, *_ = env.step({"role": "assistant", "content": "", "tool_calls": calls})
        *_, info = env.step({"role": "assistant", "content": "Answer: 42"})
    finally:
        env.close()
    assert [c["ok"] for c in info["tool_calls"]] == [False, False]
    assert observation[0]["content"] == "Error: unknown tool 'nope'."
    assert info["tools_used"] == []
