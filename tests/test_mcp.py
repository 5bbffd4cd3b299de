"""The MCP transport with the official client: same tools, same specs, same output as HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent
from pydantic import ValidationError

from testkit import TOKENS, LiveServer, auth

DOC = "filings/henderson-holdings-10k-2025.html"

# (tool, arguments): calls the tools serve.
GOOD_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("search", {"query": "Henderson Holdings net income 2025", "top_k": 4}),
    ("search", {"query": "Apex Materials Group liquidity"}),
    ("search", {"query": "cobalt revenue", "top_k": 1}),
    ("list", {}),
    ("list", {"prefix": "filings/cobalt"}),
    ("list", {"prefix": "filings/", "page": 2}),
    ("list", {"prefix": "nothing-here/"}),
    ("read", {"path": DOC}),
    ("read", {"path": DOC, "offset": 7000}),
]

# (tool, arguments, id): every kind of bad call, each answered by an `Error: ...` text.
BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("search", {}, "missing-required"),
    ("read", {"offset": 3}, "missing-required-with-optional-given"),
    ("search", {"query": 42}, "integer-for-string"),
    ("search", {"query": None}, "null-for-string"),
    ("search", {"query": ["a", "b"]}, "array-for-string"),
    ("search", {"query": {"text": "a"}}, "object-for-string"),
    ("search", {"query": "x", "top_k": "3"}, "string-for-integer"),
    # The MCP SDK would pre-parse JSON inside strings; the shared validator must not.
    ("search", {"query": "x", "top_k": "[3]"}, "json-string-for-integer"),
    ("search", {"query": "x", "top_k": True}, "boolean-for-integer"),
    ("read", {"path": DOC, "offset": 1.5}, "number-for-integer"),
    ("read", {"path": DOC, "offset": 2.0}, "integral-number-for-integer"),
    ("list", {"page": None}, "null-for-integer"),
    ("search", {"query": "x", "colour": "red"}, "unknown-argument"),
    ("read", {"path": DOC, "surprise": 1, "": 2}, "two-unknown-arguments"),
    ("search", {"query": "x", "top_k": 0}, "below-minimum"),
    ("search", {"query": "x", "top_k": 51}, "above-maximum"),
    ("search", {"query": "x", "top_k": 10**12}, "far-above-maximum"),
    ("list", {"page": 0}, "page-below-minimum"),
    ("read", {"path": DOC, "offset": -1}, "negative-offset"),
    ("search", {"query": 1, "top_k": 0, "k": 3}, "several-problems-at-once"),
    ("search", {"query": "   "}, "tool-refuses-blank-query"),
    ("search", {"query": "x" * 3000}, "tool-refuses-long-query"),
    ("list", {"prefix": "filings/", "page": 50}, "tool-refuses-page-past-end"),
    ("read", {"path": "../etc/passwd"}, "tool-refuses-escape"),
    ("read", {"path": "/etc/passwd"}, "tool-refuses-absolute-path"),
    ("read", {"path": "filings/missing.html"}, "tool-refuses-missing-document"),
    ("read", {"path": DOC, "offset": 10**9}, "tool-refuses-offset-past-end"),
    ("delete_everything", {"path": DOC}, "unknown-tool"),
    ("Search", {"query": "x"}, "unknown-tool-wrong-case"),
]

# The wording itself, pinned for a few (the matrix only says both transports agree).
EXACT_TEXT = {
    "missing-required": "Error: invalid arguments for search: query: required argument missing.",
    "string-for-integer": (
        "Error: invalid arguments for search: top_k: Input should be a valid integer, got string."
    ),
    "unknown-argument": (
        "Error: invalid arguments for search: unknown argument 'colour' (accepted: query, top_k)."
    ),
    "below-minimum": (
        "Error: invalid arguments for search: top_k: Input should be greater than or equal to 1."
    ),
    "several-problems-at-once": (
        "Error: invalid arguments for search: query: Input should be a valid string, got integer; "
        "top_k: Input should be greater than or equal to 1; "
        "unknown argument 'k' (accepted: query, top_k)."
    ),
    "unknown-tool": "Error: unknown tool 'delete_everything'. Tools: search, list, read.",
}


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1
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


def key(name: str, arguments: dict[str, Any]) -> str:
    return json.dumps([name, arguments], sort_keys=True)


@pytest.fixture(scope="module")
def mcp_answers(mcp_server: LiveServer) -> dict[str, tuple[bool, str]]:
    """Every call of both matrices over one MCP session (streamable HTTP, the official client):
    (is_error, text) by call."""
    calls = [*GOOD_CALLS, *((name, args) for name, args, _ in BAD_CALLS)]

    async def run_all(client: Client) -> dict[str, tuple[bool, str]]:
        answers = {}
        for name, arguments in calls:
            result = await client.call_tool(name, arguments)
            answers[key(name, arguments)] = (bool(result.is_error), text_of(result))
        return answers

    answers: dict[str, tuple[bool, str]] = with_mcp(mcp_server.url, TOKENS[1], run_all)
    return answers


@pytest.fixture(scope="module")
def http(http_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=http_server.url, headers=auth(), timeout=30) as client:
        yield client


def http_text(http: httpx.Client, name: str, arguments: dict[str, Any]) -> tuple[int, bool, str]:
    """Status, the body's `is_error` flag and its output for one HTTP call."""
    response = http.post(f"/{name}", json={"arguments": arguments, "call_id": "m1"})
    body = response.json()
    assert body["call_id"] == "m1"
    assert isinstance(body["is_error"], bool)
    return response.status_code, body["is_error"], str(body["output"])


def test_mcp_lists_exactly_the_http_specs(mcp_server: LiveServer, http: httpx.Client) -> None:
    listed = with_mcp(mcp_server.url, TOKENS[0], lambda c: c.list_tools())
    specs = http.get("/tools").json()
    assert [t.name for t in listed.tools] == [s["function"]["name"] for s in specs]
    for tool, spec in zip(listed.tools, specs, strict=True):
        function = spec["function"]
        assert tool.description == function["description"]
        # Byte for byte, key order included (on the protocol version the client negotiates).
        assert json.dumps(tool.input_schema) == json.dumps(function["parameters"])
        assert tool.input_schema["additionalProperties"] is False
        assert "title" not in json.dumps(tool.input_schema)


@pytest.mark.parametrize(
    ("name", "arguments"), GOOD_CALLS, ids=[f"{name}-{i}" for i, (name, _) in enumerate(GOOD_CALLS)]
)
def test_good_calls_give_the_same_output(
    mcp_answers: dict[str, tuple[bool, str]],
    http: httpx.Client,
    name: str,
    arguments: dict[str, Any],
) -> None:
    is_error, text = mcp_answers[key(name, arguments)]
    status, http_is_error, output = http_text(http, name, arguments)
    assert status == 200
    assert not is_error
    assert not http_is_error  # the two transports' flags agree
    assert not text.startswith("Error")
    assert text == output


@pytest.mark.parametrize(
    ("name", "arguments", "case"), BAD_CALLS, ids=[case for _, _, case in BAD_CALLS]
)
def test_bad_calls_give_the_same_error_text(
    mcp_answers: dict[str, tuple[bool, str]],
    http: httpx.Client,
    name: str,
    arguments: dict[str, Any],
    case: str,
) -> None:
    is_error, text = mcp_answers[key(name, arguments)]
    status, http_is_error, output = http_text(http, name, arguments)
    assert is_error
    assert http_is_error  # the two transports' flags agree
    assert text == output
    assert status == (404 if case.startswith("unknown-tool") else 200)
    assert text.startswith("Error: ")
    assert text.count("\n") == 0
    # Nothing of pydantic's raw dump, nor of the MCP SDK's own wording.
    for leak in ("validation error", "errors.pydantic.dev", "input_value", "Error executing"):
        assert leak not in text
    if case in EXACT_TEXT:
        assert text == EXACT_TEXT[case]


def test_the_official_client_cannot_send_non_object_arguments(mcp_server: LiveServer) -> None:
    """Non-object arguments never reach a tool on either transport: HTTP refuses the request
    (400 invalid_request, see test_http) and the MCP client refuses to send it."""

    async def call(client: Client) -> BaseException | None:
        try:
            await client.call_tool("search", [1, 2])  # type: ignore[arg-type]
        except ValidationError as exc:
            return exc
        return None

    refused = with_mcp(mcp_server.url, TOKENS[0], call)
    assert isinstance(refused, ValidationError)
    assert "arguments" in str(refused)


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
