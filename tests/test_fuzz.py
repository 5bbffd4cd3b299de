"""Property-based fuzzing of the HTTP API: whatever arrives, no 5xx and no byte from outside;
and whatever arguments arrive, MCP answers them with HTTP's text.

Runs the real apps in-process (Starlette's TestClient drives HTTP over ASGI, the official MCP
client talks to the MCPServer directly) so that hypothesis can try hundreds of calls in seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp_types import TextContent
from starlette.testclient import TestClient

from testkit import TOKENS, auth
from toolservers.auth import TokenSet
from toolservers.http_app import create_http_app
from toolservers.mcp_app import create_mcp_server
from toolservers.tools import Toolbox

SENTINEL = "SENTINEL-OUTSIDE-THE-CORPUS-7f3a"

path_like = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "../outside-secret.txt",
            "filings/../../outside-secret.txt",
            "/etc/passwd",
            "filings/henderson-industries-10q-2025-q3.html",
            "filings/./henderson-industries-10k-2025.html",
            "filings//henderson-industries-10k-2025.html",
            "filings\\..\\..\\outside-secret.txt",
            "%2e%2e/outside-secret.txt",
            "filings/\x00",
            "~/.ssh/id_rsa",
            "facts.jsonl",
        ]
    ),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    path_like,
)
json_value = st.recursive(
    json_scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
argument_names = st.sampled_from(["query", "top_k", "prefix", "page", "path", "offset", "x", ""])
arguments = st.dictionaries(argument_names, json_value, max_size=4)
routes = st.sampled_from(["/search", "/list", "/read"])


@pytest.fixture(scope="module")
def client(toolbox: Toolbox, corpus_dir: Path) -> Iterator[TestClient]:
    (corpus_dir.parent / "outside-secret.txt").write_text(SENTINEL)
    app = create_http_app(toolbox, TokenSet(TOKENS))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def check(response: Any) -> None:
    assert response.status_code < 500, response.text
    assert SENTINEL not in response.text
    assert "Traceback" not in response.text


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=routes, args=arguments, call_id=st.one_of(st.none(), st.text(max_size=10)))
def test_any_arguments_get_a_200_or_4xx(
    client: TestClient, route: str, args: dict[str, Any], call_id: str | None
) -> None:
    response = client.post(route, json={"arguments": args, "call_id": call_id}, headers=auth())
    check(response)
    if response.status_code == 200:
        body = response.json()
        assert isinstance(body["output"], str)
        assert body["call_id"] == call_id


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=routes,
    body=st.one_of(st.binary(max_size=200), json_value.map(json.dumps).map(str.encode)),
)
def test_any_body_gets_a_200_or_4xx(client: TestClient, route: str, body: bytes) -> None:
    check(client.post(route, content=body, headers=auth()))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]),
    path=st.sampled_from(
        ["/search", "/tools", "/health", "/nope", "/read/x", "/docs", "/openapi.json"]
    ),
)
def test_other_methods_and_paths_never_500(client: TestClient, method: str, path: str) -> None:
    check(client.request(method, path, headers=auth()))


@pytest.fixture(scope="module")
def mcp(toolbox: Toolbox) -> MCPServer[object]:
    return create_mcp_server(toolbox)


async def mcp_call(server: MCPServer[object], name: str, args: dict[str, Any]) -> tuple[bool, str]:
    async with Client(server) as client:
        result = await client.call_tool(name, args)
    block = result.content[0]
    assert isinstance(block, TextContent)
    return bool(result.is_error), block.text


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(["search", "list", "read", "nope", "Read"]), args=arguments)
def test_mcp_answers_any_arguments_with_the_http_text(
    client: TestClient, mcp: MCPServer[object], name: str, args: dict[str, Any]
) -> None:
    response = client.post(f"/{name}", json={"arguments": args}, headers=auth())
    assert response.status_code == (200 if name in ("search", "list", "read") else 404)
    output = response.json()["output"]
    is_error, text = asyncio.run(mcp_call(mcp, name, args))
    assert text == output
    assert is_error is response.json()["is_error"]  # the transports' flags agree
    assert is_error == output.startswith("Error: ")  # no document of this corpus starts so
