"""Which bearer token reaches which tool server, seen from the server's side.

Two small third-party-style servers run under a real uvicorn on 127.0.0.1, one speaking the
tool HTTP contract and one MCP over streamable HTTP, each behind an ASGI middleware that
records the Authorization header of every request. TOOL_BEARER (toolgym's own token) is set
in every test, so a leak to a server that did not ask for it would show.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

import envs
from envs.errors import EnvConfigError
from envs.registry import NoTokenWarning
from testkit import (
    LiveServer,
    mcp_streamable_app,
    start_server,
    text_tool_spec,
    tool_contract_app,
)

pytestmark = pytest.mark.usefixtures("forget_new_envs")

OWN_TOKEN = "toolgym-own-secret"  # TOOL_BEARER: must reach toolgym's servers only
ACME_TOKENS = "acme-current, acme-next"  # a third party's variable, rotation-style
ECHO_SPEC = text_tool_spec("echo", "Repeat the text.")


class HeaderLog:
    """Pure ASGI middleware: the Authorization header values of every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[list[str]] = []  # one entry per request, [] when none was sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests.append(
                [value.decode() for key, value in scope["headers"] if key == b"authorization"]
            )
        await self.app(scope, receive, send)


def http_tools_app() -> Starlette:
    """The tool HTTP contract, minimally: GET /tools and POST /echo -> {"output": ...}."""
    return tool_contract_app(
        [ECHO_SPEC],
        lambda name, body: JSONResponse({"output": f"echo: {body['arguments']['text']}"}),
    )


def mcp_tools_app() -> Starlette:
    server = MCPServer(name="acme", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Repeat the text."""
        return f"echo: {text}"

    return mcp_streamable_app(server)


@dataclass
class Recorder:
    live: LiveServer
    log: HeaderLog

    @property
    def url(self) -> str:
        return self.live.url


@pytest.fixture(scope="module")
def recorders() -> Iterator[dict[str, Recorder]]:
    """A recording server per transport, shared by the module's tests."""
    found = {}
    for transport, app in (("http", http_tools_app()), ("mcp", mcp_tools_app())):
        log = HeaderLog(app)
        found[transport] = Recorder(start_server(log), log)
    yield found
    for recorder in found.values():
        recorder.live.stop()


@pytest.fixture(params=["http", "mcp"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(transport: str, recorders: dict[str, Recorder]) -> Recorder:
    """The recording server for `transport`, its log emptied for the test."""
    recorder = recorders[transport]
    recorder.log.requests.clear()
    return recorder


@pytest.fixture(autouse=True)
def own_token_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOL_BEARER", f"{OWN_TOKEN},{OWN_TOKEN}-next")


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    row = {
        "id": "r1",
        "prompt": "What is six times seven?",
        "reference_answer": "42",
        "metadata": {"task_type": "lookup", "difficulty": "easy"},
    }
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


def register(folder: Path, env_id: str, rows: Path, url: str, transport: str, **extra: str) -> str:
    """Register a YAML environment file written to `folder`."""
    spec = {"id": env_id, "dataset": str(rows), "tools_url": url, "transport": transport, **extra}
    path = folder / "env.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return envs.register_yaml(path)


def play(env_id: str, **kwargs: Any) -> str:
    """One episode that lists the tools and calls one; the tool's output."""
    env = gym.make(env_id, **kwargs)
    try:
        env.reset(seed=0)
        observation, *_ = env.step(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "c0",
                        "type": "function",
                        "function": {"name": "echo", "arguments": json.dumps({"text": "hi"})},
                    }
                ],
            }
        )
        env.step({"role": "assistant", "content": "Answer: 42"})
    finally:
        env.close()
    return str(observation[0]["content"])


def headers_seen(server: Recorder) -> set[tuple[str, ...]]:
    """The distinct Authorization headers the server received (after at least one request)."""
    assert server.log.requests, "the episode never reached the server"
    return {tuple(values) for values in server.log.requests}


def no_token_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, NoTokenWarning)]


def test_a_yaml_env_without_token_env_sends_no_authorization_and_says_so_once(
    tmp_path: Path, rows: Path, server: Recorder, transport: str
) -> None:
    env_id = register(tmp_path, f"acme/NoToken{transport.title()}-v0", rows, server.url, transport)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # so only our own once-per-id rule can hide a repeat
        outputs = [play(env_id), play(env_id)]
    assert outputs == ["echo: hi", "echo: hi"]
    assert headers_seen(server) == {()}  # no Authorization header on any request
    assert no_token_warnings(caught) == [
        f"environment {env_id} has no token configured (token_env unset): "
        "its tool calls carry no Authorization header"
    ]


@pytest.mark.parametrize(
    ("variable", "sent"),
    [
        ("ACME_TOKEN", "acme-current"),  # a third party's own token, and nothing else
        ("TOOL_BEARER", OWN_TOKEN),  # named explicitly, as the trainer's demo does
    ],
)
def test_a_yaml_env_with_token_env_sends_exactly_its_first_token(
    tmp_path: Path,
    rows: Path,
    server: Recorder,
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    sent: str,
) -> None:
    monkeypatch.setenv("ACME_TOKEN", ACME_TOKENS)
    env_id = register(
        tmp_path, f"acme/Token{transport.title()}-v0", rows, server.url, transport,
        token_env=variable,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert play(env_id) == "echo: hi"
    assert headers_seen(server) == {(f"Bearer {sent}",)}
    assert no_token_warnings(caught) == []


@pytest.mark.parametrize("value", [None, "", " , "])
def test_a_yaml_env_whose_token_env_is_empty_is_refused_by_name(
    tmp_path: Path,
    rows: Path,
    recorders: dict[str, Recorder],
    monkeypatch: pytest.MonkeyPatch,
    value: str | None,
) -> None:
    if value is None:
        monkeypatch.delenv("ACME_EMPTY_TOKEN", raising=False)
    else:
        monkeypatch.setenv("ACME_EMPTY_TOKEN", value)
    server = recorders["http"]
    server.log.requests.clear()
    env_id = register(
        tmp_path, "acme/EmptyToken-v0", rows, server.url, "http", token_env="ACME_EMPTY_TOKEN"
    )
    with pytest.raises(EnvConfigError, match=r"acme/EmptyToken-v0: .*ACME_EMPTY_TOKEN is empty"):
        gym.make(env_id)
    assert server.log.requests == []  # refused before anything was sent


def test_a_builtin_env_presents_tool_bearer_to_toolgym_servers(
    rows: Path, server: Recorder, transport: str
) -> None:
    output = play(
        "toolgym/FilingsQA-v0", dataset=str(rows), tools_url=server.url, transport=transport
    )
    assert output == "echo: hi"
    assert headers_seen(server) == {(f"Bearer {OWN_TOKEN}",)}


def test_a_plugin_on_the_generic_entry_point_gets_no_token_unasked(
    rows: Path, server: Recorder, transport: str
) -> None:
    env_id = f"acme/Plugin{transport.title()}-v0"
    gym.register(id=env_id, entry_point="envs.tool_env:make_tool_env")  # no token_env
    assert play(env_id, dataset=str(rows), tools_url=server.url, transport=transport) == "echo: hi"
    assert headers_seen(server) == {()}
