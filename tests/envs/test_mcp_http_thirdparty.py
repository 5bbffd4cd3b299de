"""A third party's MCP server over streamable HTTP: server-everything (npm, run for real as a
subprocess on a port of its own) for content and restarts; a small recording MCPServer of ours
for the headers an environment sends."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

import envs
from envs.tool_env import ToolEnv
from mcpkit import ANSWER, HttpEverything, call, everything_over_http, needs_node, write_env
from testkit import LiveServer, mcp_streamable_app, start_server

pytestmark = pytest.mark.usefixtures("forget_new_envs")


@pytest.fixture
def everything(tmp_path: Path) -> Iterator[HttpEverything]:
    yield from everything_over_http(tmp_path)


def make(env_id: str) -> ToolEnv:
    env = gym.make(env_id, disable_env_checker=True).unwrapped
    assert isinstance(env, ToolEnv)
    return env


def everything_env(folder: Path, server: HttpEverything, **spec: object) -> ToolEnv:
    env_id = "acme/EverythingHttp-v0"
    path = write_env(folder, env_id, transport="mcp", tools_url=server.url, **spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no token_env: the one-time NoTokenWarning
        return make(envs.register_yaml(path))


@needs_node
def test_content_types_over_streamable_http(tmp_path: Path, everything: HttpEverything) -> None:
    env = everything_env(tmp_path, everything, tools=["get-tiny-image", "get-resource-reference"])
    try:
        _, info = env.reset(seed=0)
        assert [t["function"]["name"] for t in info["tools"]] == [
            "get-tiny-image",
            "get-resource-reference",
        ]  # the registration's order, not the server's
        image, *_ = env.step(call("get-tiny-image"))
        blob, *_ = env.step(call("get-resource-reference", {"resourceType": "Blob"}, "c2"))
        refused, *_ = env.step(call("echo", {"message": "hi"}, "c3"))  # not among `tools`
    finally:
        env.close()
    assert image[0]["content"].splitlines()[1].startswith("[image image/png, ")
    assert blob[0]["content"].splitlines()[1].startswith("[resource demo://resource/dynamic/blob/1")
    assert refused[0]["content"] == (
        "Error: unknown tool 'echo'. Tools: get-tiny-image, get-resource-reference."
    )


@needs_node
@pytest.mark.parametrize("when", ["down", "restarted"])
def test_a_restarted_server_ends_the_running_episode_as_infra_then_reset_recovers(
    tmp_path: Path, everything: HttpEverything, when: str
) -> None:
    """`down`: the call finds no server; `restarted`: a new process that does not know the
    session. Either way no grade is recorded, and the next reset opens a new session."""
    env = everything_env(tmp_path, everything)
    try:
        env.reset(seed=0)
        first, *_ = env.step(call("echo", {"message": "one"}))
        assert first[0]["content"] == "Echo: one"
        everything.stop()
        if when == "restarted":
            everything.start()
        _, reward, terminated, truncated, _ = env.step(call("echo", {"message": "two"}, "c2"))
        record = env.record
        assert record.infra_error and everything.url in record.infra_error
        assert record.grade is None and truncated and not terminated and reward == 0.0
        if when == "down":
            everything.start()
        env.reset(seed=1)
        again, *_ = env.step(call("echo", {"message": "three"}))
        assert again[0]["content"] == "Echo: three"
        _, reward, terminated, *_ = env.step(ANSWER)
        assert terminated and reward == 1.0 and env.record.infra_error is None
    finally:
        env.close()


@needs_node
def test_isolation_episode_opens_a_session_per_reset(
    tmp_path: Path, everything: HttpEverything
) -> None:
    env = everything_env(tmp_path, everything, isolation="episode")
    try:
        for seed in range(2):
            env.reset(seed=seed)
            observation, *_ = env.step(call("echo", {"message": str(seed)}))
            assert observation[0]["content"] == f"Echo: {seed}"
    finally:
        env.close()
    log = (tmp_path / f"everything-{everything.port}.log").read_text()
    assert log.count("Session initialized with ID") == 2


class HeaderLog:
    """Pure ASGI middleware: every request's headers, lower-cased names."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[dict[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@pytest.fixture
def recorder() -> Iterator[tuple[LiveServer, HeaderLog]]:
    server = MCPServer(name="acme", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Repeat the text."""
        return f"echo: {text}"

    log = HeaderLog(mcp_streamable_app(server))
    live = start_server(log)
    yield live, log
    live.stop()


@pytest.mark.parametrize("token_env", [None, "ACME_TOKEN"])
def test_headers_go_on_every_request_and_authorization_only_with_token_env(
    tmp_path: Path,
    recorder: tuple[LiveServer, HeaderLog],
    monkeypatch: pytest.MonkeyPatch,
    token_env: str | None,
) -> None:
    live, log = recorder
    monkeypatch.setenv("TOOL_BEARER", "toolgym-own-secret")
    monkeypatch.setenv("ACME_TOKEN", "acme-token")
    extra = {"token_env": token_env} if token_env else {}
    path = write_env(
        tmp_path,
        "acme/Headers-v0",
        transport="mcp",
        tools_url=live.url,
        headers={"X-Tenant": "blue", "X-Trace": "t-1"},
        **extra,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = make(envs.register_yaml(path))
    try:
        env.reset(seed=0)
        observation, *_ = env.step(call("echo", {"text": "hi"}))
    finally:
        env.close()
    assert observation[0]["content"] == "echo: hi"
    assert log.requests
    assert all(r.get("x-tenant") == "blue" and r.get("x-trace") == "t-1" for r in log.requests)
    sent = {r.get("authorization") for r in log.requests}
    assert sent == ({"Bearer acme-token"} if token_env else {None})
