"""`serve --transport stdio` as a real subprocess: MCP on stdout and nothing else, an honest
note on stderr (no host, no port, no INSECURE banner), and no token asked for. Both commands
that carry the verb: `toolgym serve` and the tool servers' own `python -m toolservers serve`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp_types import TextContent
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from toolservers.index import SearchMode, build_index
from toolservers.service import open_toolbox
from toolservers.tools import openai_tool_specs

TOOLGYM = str(Path(sys.executable).with_name("toolgym"))
TOOLSERVERS = [sys.executable, "-m", "toolservers"]  # what an MCP client may start instead
STARTUP_S = 60  # a cold `toolgym` import takes a few seconds on a busy 2-core machine
# Words of the network banners: none of them is true of a pipe.
NETWORK_WORDS = ("listening", "INSECURE", "127.0.0.1", "http://", "--host")


@pytest.fixture
def indexed_small_corpus(small_corpus: Path) -> Path:
    """Twelve documents with a lexical index: no embedding model to load, so a quick start."""
    build_index(small_corpus, search=SearchMode.LEXICAL, progress=False)
    return small_corpus


def serve_args(corpus: Path) -> list[str]:
    return ["serve", "--corpus", str(corpus), "--transport", "stdio"]


def env_with(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in changes}
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


def test_official_stdio_client_lists_and_calls_with_no_network_banner(
    indexed_small_corpus: Path, tmp_path: Path
) -> None:
    params = StdioServerParameters(
        command=TOOLGYM, args=serve_args(indexed_small_corpus), env=env_with(TOOL_BEARER=None)
    )
    stderr_path = tmp_path / "stderr.txt"

    async def session() -> tuple[Any, list[tuple[bool, str]]]:
        with stderr_path.open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                listed = await client.list_tools()
                answers = []
                for name in ("list", "search", "nope"):
                    result = await asyncio.wait_for(client.call_tool(name, {}), 30)
                    block = result.content[0]
                    assert isinstance(block, TextContent)
                    answers.append((bool(result.is_error), block.text))
                return listed, answers

    listed, answers = asyncio.run(asyncio.wait_for(session(), STARTUP_S))

    specs = openai_tool_specs(open_toolbox(indexed_small_corpus))
    assert [t.name for t in listed.tools] == ["search", "list", "read"]
    for tool, spec in zip(listed.tools, specs, strict=True):
        assert json.dumps(tool.input_schema) == json.dumps(spec["function"]["parameters"])
    assert not answers[0][0]
    assert answers[0][1].startswith("12 documents under ''")
    assert answers[1] == (
        True,
        "Error: invalid arguments for search: query: required argument missing.",
    )
    assert answers[2] == (True, "Error: unknown tool 'nope'. Tools: search, list, read.")

    stderr = stderr_path.read_text()
    assert "toolgym MCP server on stdio (12 documents" in stderr
    assert "no network listener" in stderr
    for word in NETWORK_WORDS:
        assert word not in stderr, stderr


def _frame(message_id: int | None, method: str, params: dict[str, Any]) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if message_id is not None:
        message["id"] = message_id
    return json.dumps(message).encode() + b"\n"


def test_stdout_carries_only_json_rpc_and_a_token_is_not_needed(
    indexed_small_corpus: Path,
) -> None:
    """Raw bytes, no client library in between: every stdout line must be a JSON-RPC message.
    TOOL_BEARER holds the docker placeholder, which an HTTP server refuses to start with; a
    pipe has no caller to authenticate, so stdio starts and says the token is not used."""
    initialize = {
        "protocolVersion": HANDSHAKE_PROTOCOL_VERSIONS[-1],  # initialize-style handshake
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"},
    }
    process = subprocess.Popen(
        [*TOOLSERVERS, *serve_args(indexed_small_corpus)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_with(TOOL_BEARER="replace-me-with-a-token"),
    )
    assert process.stdin is not None and process.stdout is not None
    # readline() has no timeout: a hung server is killed instead, which ends the reads.
    watchdog = threading.Timer(STARTUP_S, process.kill)
    watchdog.start()
    try:
        process.stdin.write(_frame(1, "initialize", initialize))
        process.stdin.flush()
        first = process.stdout.readline()  # blocks until the server has loaded and answered
        process.stdin.write(_frame(None, "notifications/initialized", {}))
        process.stdin.write(_frame(2, "tools/list", {}))
        process.stdin.flush()
        second = process.stdout.readline()
        # communicate() closes stdin: on that EOF the server ends the session and exits.
        rest, stderr = process.communicate(timeout=STARTUP_S)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()

    lines = [first, second, *rest.splitlines()]
    messages = [json.loads(line) for line in lines if line.strip()]
    assert all(m.get("jsonrpc") == "2.0" for m in messages), lines
    by_id = {m.get("id"): m for m in messages}
    assert by_id[1]["result"]["serverInfo"]["name"] == "toolgym"
    assert [t["name"] for t in by_id[2]["result"]["tools"]] == ["search", "list", "read"]
    assert process.returncode == 0
    note = stderr.decode()
    assert "TOOL_BEARER is not used" in note
    for word in NETWORK_WORDS:
        assert word not in note, note
