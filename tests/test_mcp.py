"""The MCP transport with the official client: same tools, same specs, same output as HTTP."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent

from testkit import TOKENS, LiveServer, auth

SAME_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("search", {"query": "Henderson Holdings net income 2025", "top_k": 4}),
    ("search", {"query": "Apex Materials Group liquidity"}),
    ("list", {"prefix": "filings/cobalt"}),
    ("list", {"prefix": "filings/", "page": 2}),
    ("read", {"path": "filings/henderson-holdings-10k-2025.html"}),
    ("read", {"path": "filings/henderson-holdings-10k-2025.html", "offset": 7000}),
    ("read", {"path": "../etc/passwd"}),
    ("read", {"path": "filings/missing.html"}),
    ("search", {"query": "   "}),
    ("list", {"prefix": "filings/", "page": 50}),
]
SCHEMA_ERRORS: list[tuple[str, dict[str, Any]]] = [
    ("search", {"query": "x", "top_k": 0}),
    ("search", {"query": "x", "top_k": "3"}),
    ("read", {"path": 5}),
    ("read", {"path": "filings/henderson-holdings-10k-2025.html", "surprise": 1}),
    ("search", {}),
]


def text_of(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def with_mcp(url: str, token: str, body: Callable[[Client], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with (
            httpx2.AsyncClient(headers=auth(token), timeout=30) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
        ):
            return await body(client)

    return asyncio.run(run())


def strip_titles(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_titles(v) for k, v in value.items() if k != "title"}
    if isinstance(value, list):
        return [strip_titles(v) for v in value]
    return value


def test_mcp_lists_the_same_tools_as_the_http_specs(
    mcp_server: LiveServer, http_server: LiveServer
) -> None:
    listed = with_mcp(mcp_server.url, TOKENS[0], lambda c: c.list_tools())
    specs = httpx.get(f"{http_server.url}/tools", headers=auth()).json()
    assert [t.name for t in listed.tools] == [s["function"]["name"] for s in specs]
    for tool, spec in zip(listed.tools, specs, strict=True):
        assert tool.description == spec["function"]["description"]
        mcp_schema = strip_titles(tool.input_schema)
        http_schema = spec["function"]["parameters"]
        assert mcp_schema["properties"] == http_schema["properties"]
        assert mcp_schema.get("required", []) == http_schema.get("required", [])


def test_http_and_mcp_give_the_same_output(mcp_server: LiveServer, http_server: LiveServer) -> None:
    async def calls(client: Client) -> list[tuple[bool, str]]:
        results = []
        for name, arguments in SAME_CALLS:
            result = await client.call_tool(name, arguments)
            results.append((bool(result.is_error), text_of(result)))
        return results

    over_mcp = with_mcp(mcp_server.url, TOKENS[1], calls)
    with httpx.Client(base_url=http_server.url, headers=auth(), timeout=30) as http:
        for (name, arguments), (is_error, text) in zip(SAME_CALLS, over_mcp, strict=True):
            output = http.post(f"/{name}", json={"arguments": arguments}).json()["output"]
            assert text == output, (name, arguments)
            assert is_error == output.startswith("Error: ")


def test_schema_violations_are_error_results_over_mcp(mcp_server: LiveServer) -> None:
    async def calls(client: Client) -> list[Any]:
        return [await client.call_tool(name, args) for name, args in SCHEMA_ERRORS]

    for result in with_mcp(mcp_server.url, TOKENS[0], calls):
        assert result.is_error
        assert "Traceback" not in text_of(result)


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


@pytest.mark.parametrize("token", ["wrong", TOKENS[0] + "x"])
def test_mcp_refuses_a_bad_token(mcp_server: LiveServer, token: str) -> None:
    with pytest.raises(BaseException) as caught:
        with_mcp(mcp_server.url, token, lambda c: c.list_tools())
    assert any(isinstance(leaf, MCPError) for leaf in _leaves(caught.value))


def test_mcp_endpoint_answers_401_with_bearer_challenge(mcp_server: LiveServer) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    response = httpx.post(f"{mcp_server.url}/mcp", json=body)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{mcp_server.url}/health").status_code == 200


@pytest.mark.slow
def test_stdio_transport_serves_the_same_tools(corpus_dir: Path, hybrid_index: Path) -> None:
    toolgym = Path(sys.executable).with_name("toolgym")
    params = StdioServerParameters(
        command=str(toolgym),
        args=["serve", "--corpus", str(corpus_dir), "--transport", "stdio"],
        env={**os.environ, "TOOL_BEARER": ""},
    )

    async def run() -> tuple[list[str], str]:
        async with Client(params) as client:
            tools = await client.list_tools()
            result = await client.call_tool("list", {"prefix": "filings/henderson-holdings"})
            return [t.name for t in tools.tools], text_of(result)

    names, listing = asyncio.run(run())
    assert names == ["search", "list", "read"]
    assert listing.startswith("8 documents under 'filings/henderson-holdings'")
