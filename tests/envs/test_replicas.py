"""Several replicas of one tool server: balanced, failed over, cooled down, and given the token.

`ReplicaSet`'s rules are checked on a fake clock; everything else runs real toolgym servers
(HTTP and MCP) under uvicorn on 127.0.0.1, each behind a tap that counts the requests it got
and the Authorization headers they carried, and can slow its replica down.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

import envs
from envs.client import HttpToolClient, RetryPolicy
from envs.errors import EnvConfigError, ToolAuthError, ToolServerUnavailableError
from envs.mcp_client import McpHttpClient
from envs.replicas import ReplicaSet, parse_urls
from envs.server_settings import ServerSettings
from envs.tool_env import make_tool_env
from testkit import (
    TOKENS,
    LiveServer,
    free_port,
    start_worker,
    text_tool_spec,
    thread_alive,
    tool_contract_app,
    wait_until,
)
from toolservers.auth import TokenSet
from toolservers.http_app import create_http_app
from toolservers.mcp_app import create_mcp_app
from toolservers.tools import Toolbox

pytestmark = pytest.mark.usefixtures("forget_new_envs")
LIST = {"prefix": "filings/"}
QUICK = RetryPolicy(attempts=3, backoff_s=0.01, timeout_s=10)


class Tap:
    """Pure ASGI middleware: counts HTTP requests, keeps their Authorization headers, and
    holds each for `delay_s` first (a slow replica)."""

    def __init__(self, app: ASGIApp, delay_s: float = 0.0) -> None:
        self.app = app
        self.delay_s = delay_s
        self.auth: list[tuple[str, ...]] = []

    @property
    def count(self) -> int:
        return len(self.auth)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            self.auth.append(
                tuple(v.decode() for k, v in scope["headers"] if k == b"authorization")
            )
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        await self.app(scope, receive, send)


def serve(app: ASGIApp, port: int | None = None) -> LiveServer:
    """testkit.start_server, on a port of our choosing: a replica comes back where it was."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    config.timeout_graceful_shutdown = 1
    server = uvicorn.Server(config)
    thread = start_worker(lambda: asyncio.run(server.serve()), name=f"replica:{port}")
    wait_until(lambda: server.started, what=f"replica on {port}", alive=thread_alive(thread))
    return LiveServer(url=f"http://127.0.0.1:{port}", server=server, thread=thread)


class Replicas:
    """Running replicas of one app, each behind its own Tap."""

    def __init__(self, make_app: Any, n: int) -> None:
        self.make_app = make_app
        self.taps = [Tap(make_app()) for _ in range(n)]
        self.live: list[LiveServer | None] = [serve(tap) for tap in self.taps]
        self.ports = [int(s.url.rsplit(":", 1)[1]) for s in self.live if s]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def stop(self, i: int) -> None:
        server, self.live[i] = self.live[i], None
        if server is not None:
            server.stop()

    def restart(self, i: int) -> None:
        self.taps[i] = Tap(self.make_app())
        self.live[i] = serve(self.taps[i], self.ports[i])

    def close(self) -> None:
        for i in range(len(self.live)):
            self.stop(i)


@pytest.fixture
def http_replicas(toolbox: Toolbox) -> Iterator[Replicas]:
    replicas = Replicas(lambda: create_http_app(toolbox, TokenSet(TOKENS)), 2)
    yield replicas
    replicas.close()


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    metadata = {"task_type": "lookup", "difficulty": "easy"}
    row = {"id": "r1", "prompt": "List them.", "reference_answer": "42", "metadata": metadata}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


def play(env: gym.Env[Any, Any], tool: str = "list", **arguments: Any) -> dict[str, Any]:
    """One episode: a tool call, then an answer; the final info."""
    env.reset(seed=0)
    function = {"name": tool, "arguments": json.dumps(arguments or LIST)}
    tool_call = {"id": "c0", "type": "function", "function": function}
    env.step({"role": "assistant", "content": "", "tool_calls": [tool_call]})
    *_, info = env.step({"role": "assistant", "content": "Answer: 42"})
    return dict(info)


# ---- the balancing rules, on a fake clock ----


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fewest_in_flight_wins_and_ties_go_round_robin() -> None:
    replicas = ReplicaSet(["http://a", "http://b", "http://c"], clock=Clock())
    assert [replicas.acquire() for _ in range(3)] == ["http://a", "http://b", "http://c"]
    replicas.release("http://b")
    assert replicas.acquire() == "http://b"  # the only one with nothing in flight
    for url in replicas.urls:
        replicas.release(url)
    firsts = [replicas.acquire() for _ in range(3)]
    assert sorted(firsts) == list(replicas.urls)  # equal loads: each in turn
    assert replicas.acquire(avoid=["http://a", "http://b"]) == "http://c"


def test_a_failed_replica_cools_down_longer_each_time_until_it_answers() -> None:
    clock = Clock()
    replicas = ReplicaSet(["http://a", "http://b"], cooldown_s=1.0, max_cooldown_s=3.0, clock=clock)
    replicas.failed("http://a")
    assert replicas.cooling() == ["http://a"]
    assert {replicas.acquire() for _ in range(4)} == {"http://b"}  # even though b is busier
    clock.now += 1.01
    assert replicas.cooling() == []
    replicas.failed("http://a")  # second failure in a row: 2 s
    clock.now += 1.5
    assert replicas.cooling() == ["http://a"]
    replicas.failed("http://a")
    replicas.failed("http://a")  # 4 s, 8 s: capped at 3
    clock.now += 3.01
    assert replicas.cooling() == []
    replicas.failed("http://a")
    replicas.ok("http://a")  # an answer ends the cooldown and the streak
    assert replicas.cooling() == [] and replicas.snapshot()["http://a"].failures == 0


def test_when_every_replica_cools_down_the_first_to_recover_is_tried() -> None:
    clock = Clock()
    replicas = ReplicaSet(["http://a", "http://b"], clock=clock)
    replicas.failed("http://b")
    clock.now += 0.5
    replicas.failed("http://a")
    assert replicas.acquire() == "http://b"


# ---- spelling: several URLs, one meaning ----


@pytest.mark.parametrize(
    "value",
    [
        "http://a:8080, http://b:8080/",
        ["http://a:8080", "http://b:8080"],
        ("http://a:8080", "http://b:8080", "http://a:8080"),
    ],
)
def test_a_url_list_or_comma_separated_string_names_the_replicas(value: Any) -> None:
    assert parse_urls(value) == ("http://a:8080", "http://b:8080")
    assert ServerSettings.of("mcp", value).tools_urls == ("http://a:8080", "http://b:8080")


@pytest.mark.parametrize(
    ("transport", "value", "problem"),
    [
        ("http", ["http://a:8080", "b:8080"], "tools_url: 'b:8080' is not an http:// or https://"),
        ("http", "http://a, ftp://b", "tools_url: 'ftp://b' is not an http:// or https://"),
        ("mcp", ["http://a", 7], "tools_url: 7 is not a URL"),
        ("stdio", ["http://a", "http://b"], "transport stdio starts its server from command"),
    ],
)
def test_a_bad_url_list_is_refused_in_one_line_naming_it(
    transport: str, value: Any, problem: str
) -> None:
    with pytest.raises(EnvConfigError) as refused:
        ServerSettings.of(transport, value, command=["x"] if transport == "stdio" else None)
    assert str(refused.value).startswith(problem) and "\n" not in str(refused.value)


def test_a_yaml_file_lists_replicas_and_names_a_bad_one(tmp_path: Path, rows: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"id: acme/Replicas-v0\ndataset: {rows}\ntools_url: [http://a:1, http://b:1]\n")
    envs.register_yaml(good)
    assert gym.spec("acme/Replicas-v0").kwargs["tools_url"] == ["http://a:1", "http://b:1"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"id: acme/BadReplica-v0\ndataset: {rows}\ntools_url: http://a:1,localhost\n")
    with pytest.raises(EnvConfigError, match=r"bad.yaml: tools_url: 'localhost' is not an http"):
        envs.register_yaml(bad)


# ---- HTTP: per request ----


def test_requests_spread_and_a_slow_replica_gets_fewer(http_replicas: Replicas) -> None:
    slow, fast = http_replicas.taps
    slow.delay_s = 0.5  # far above a fast call, even on a loaded machine
    client = HttpToolClient(http_replicas.urls, TOKENS[0], retry=QUICK)

    async def worker() -> None:
        for i in range(8):
            output = await client.call("list", LIST, f"c{i}")
            assert not output.is_error, output.text

    async def run() -> None:
        await asyncio.gather(*(worker() for _ in range(4)))
        await client.aclose()

    asyncio.run(run())
    assert slow.count + fast.count == 32
    assert slow.count >= 1  # both took traffic
    assert fast.count >= 2 * slow.count, (slow.count, fast.count)  # round-robin: 16 and 16


def test_a_dead_replica_is_cooled_down_and_used_again_once_back(http_replicas: Replicas) -> None:
    replicas = ReplicaSet(http_replicas.urls, cooldown_s=0.2, max_cooldown_s=0.4)
    client = HttpToolClient(http_replicas.urls, TOKENS[0], retry=QUICK, replicas=replicas)
    dead = http_replicas.urls[0]

    async def calls(n: int) -> None:
        for i in range(n):
            output = await client.call("list", LIST, f"c{i}")
            assert not output.is_error, output.text

    runner = asyncio.Runner()
    try:
        runner.run(calls(4))
        assert min(tap.count for tap in http_replicas.taps) >= 1
        http_replicas.stop(0)
        before = http_replicas.taps[1].count
        runner.run(calls(6))  # every call succeeds: the one that found `dead` went to the other
        assert http_replicas.taps[1].count - before >= 6
        assert replicas.snapshot()[dead].failures >= 1
        http_replicas.restart(0)
        wait_until(lambda: not replicas.cooling(), what="the cooldown to end", timeout_s=5)
        runner.run(calls(6))
        assert http_replicas.taps[0].count >= 2  # back in the rotation
        assert replicas.snapshot()[dead].failures == 0
        runner.run(client.aclose())
    finally:
        runner.close()


def test_episodes_go_on_when_a_replica_dies(http_replicas: Replicas, rows: Path) -> None:
    env = make_tool_env(rows, http_replicas.urls, TOKENS[0])
    try:
        assert play(env)["infra_error"] is None
        http_replicas.stop(0)
        for _ in range(4):
            info = play(env)
            assert info["infra_error"] is None, info["infra_error"]
    finally:
        env.close()


def test_all_replicas_down_is_one_error_naming_each(rows: Path) -> None:
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    client = HttpToolClient(urls, "t", retry=QUICK, replicas=ReplicaSet(urls))
    with pytest.raises(ToolServerUnavailableError) as down:
        asyncio.run(client.specs())
    message = str(down.value)
    assert message.startswith("tool servers failed 3 times on /tools (replicas tried: ")
    assert all(url in message for url in urls) and "ConnectError" in message


def test_a_5xx_replica_is_failed_over_and_a_refused_token_is_not_retried(
    http_replicas: Replicas,
) -> None:
    def broken() -> Starlette:
        async def fail(request: Any) -> PlainTextResponse:
            return PlainTextResponse("overloaded", status_code=503)

        return Starlette(routes=[Route("/{path:path}", fail, methods=["GET", "POST"])])

    sick = Tap(broken())
    server = serve(sick)
    try:
        urls = [server.url, http_replicas.urls[0]]
        replicas = ReplicaSet(urls)
        client = HttpToolClient(urls, TOKENS[0], retry=QUICK, replicas=replicas)
        assert asyncio.run(client.specs())  # tried the 503 first (round-robin), then the other
        assert sick.count == 1 and replicas.cooling() == [server.url]

        before = sum(tap.count for tap in http_replicas.taps)
        wrong = HttpToolClient(http_replicas.urls, "wrong", retry=QUICK)
        with pytest.raises(ToolAuthError, match=r"refused the token \(401\)"):
            asyncio.run(wrong.specs())
        assert sum(tap.count for tap in http_replicas.taps) == before + 1  # asked only once
    finally:
        server.stop()


# ---- MCP: per session ----


def test_mcp_sessions_spread_and_reopen_elsewhere_when_one_dies(toolbox: Toolbox) -> None:
    mcp = Replicas(lambda: create_mcp_app(toolbox, TokenSet(TOKENS)), 2)
    replicas = ReplicaSet([f"{url}/mcp" for url in mcp.urls], cooldown_s=5)
    clients = [McpHttpClient(mcp.urls, TOKENS[0], retry=QUICK, replicas=replicas) for _ in range(4)]

    async def episode(client: McpHttpClient) -> str:
        await client.begin_episode()
        output = await client.call("list", LIST, "c0")
        assert not output.is_error, output.text
        assert client._session is not None
        return str(client._session.replica)

    runner = asyncio.Runner()
    try:

        async def all_at_once() -> list[str]:
            return list(await asyncio.gather(*(episode(c) for c in clients)))

        on = runner.run(all_at_once())
        assert sorted(on) == sorted(replicas.urls * 2)  # two sessions on each
        assert {url: r.in_flight for url, r in replicas.snapshot().items()} == {
            url: 2 for url in replicas.urls
        }
        assert all(tap.count for tap in mcp.taps)
        mcp.stop(0)
        moved = [c for c, url in zip(clients, on, strict=True) if url == replicas.urls[0]]
        for client in moved:
            with pytest.raises(ToolServerUnavailableError):
                runner.run(client.call("list", LIST, "c1"))  # its session is gone
            assert runner.run(episode(client)) == replicas.urls[1]  # the next one is elsewhere
        assert replicas.cooling() == [replicas.urls[0]]
        for client in clients:
            runner.run(client.aclose())
        assert all(r.in_flight == 0 for r in replicas.snapshot().values())
    finally:
        runner.close()
        mcp.close()


def test_mcp_with_every_replica_down_names_each() -> None:
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    replicas = ReplicaSet([f"{url}/mcp" for url in urls])
    client = McpHttpClient(urls, "t", retry=QUICK, replicas=replicas)
    with pytest.raises(ToolServerUnavailableError) as down:
        asyncio.run(client.specs())
    assert all(f"{url}/mcp" in str(down.value) for url in urls), down.value


# ---- tokens: the same rule for every replica ----


@pytest.mark.parametrize("transport", ["http", "mcp"])
def test_tool_bearer_reaches_every_replica_of_toolgym_servers(
    toolbox: Toolbox, rows: Path, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOL_BEARER", TOKENS[1])
    make = create_http_app if transport == "http" else create_mcp_app
    servers = Replicas(lambda: make(toolbox, TokenSet(TOKENS)), 2)
    try:
        env = gym.make(
            "toolgym/FilingsQA-v0",
            dataset=str(rows),
            tools_url=",".join(servers.urls),
            transport=transport,
            # A session per episode, so that one environment's sessions visit both replicas.
            isolation="episode" if transport == "mcp" else "pool",
        )
        for _ in range(3):
            assert play(env)["infra_error"] is None
        env.close()
        for tap in servers.taps:
            assert tap.count and set(tap.auth) == {(f"Bearer {TOKENS[1]}",)}
    finally:
        servers.close()


def test_a_third_party_with_replicas_gets_no_token(
    tmp_path: Path, rows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOL_BEARER", TOKENS[0])
    spec = text_tool_spec("echo", "Repeat the text.")
    servers = Replicas(
        lambda: tool_contract_app([spec], lambda n, b: JSONResponse({"output": "echo"})), 2
    )
    try:
        path = tmp_path / "acme.yaml"
        path.write_text(f"id: acme/Echo-v0\ndataset: {rows}\ntools_url: {servers.urls}\n")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the no-token warning: test_tokens checks it
            env = gym.make(envs.register_yaml(path))
        for _ in range(3):
            assert play(env, "echo", text="hi")["infra_error"] is None
        env.close()
        for tap in servers.taps:
            assert tap.count and set(tap.auth) == {()}
    finally:
        servers.close()
