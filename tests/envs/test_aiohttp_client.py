"""envs.aiohttp_client against scripted raw servers: keep-alive, cancellation, failures named as
httpx names them, proxies from the environment, one event loop after another."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from envs.aiohttp_client import LoopSession, ProxyNotSupportedError, TransportError, env_proxy
from envs.client import HttpToolClient, RetryPolicy
from envs.errors import ToolServerUnavailableError
from envs.replicas import ReplicaSet

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def reply(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    first, *lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return first, headers, body


class Server:
    """A raw HTTP server on 127.0.0.1 whose handler gets each connection and its number."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0

    async def __aenter__(self) -> Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer, self.connections)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.origin = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.url = f"{self.origin}/v1/x?a=1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while True:
        first, headers, body = await read_request(reader)
        answer = {
            "line": first,
            "auth": headers.get("authorization"),
            "type": headers.get("content-type"),
            "body": json.loads(body) if body else None,
        }
        writer.write(reply(json.dumps(answer).encode()))
        await writer.drain()


def session() -> LoopSession:
    return LoopSession({"Authorization": "Bearer t"}, limit=4, keepalive_s=4.0)


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        for variant in (name, name.lower()):
            monkeypatch.delenv(variant, raising=False)
    return monkeypatch


def test_requests_share_one_keep_alive_connection() -> None:
    async def run() -> None:
        async with Server(echo_forever) as server:
            http = session()
            for n in range(3):
                response = await http.request("POST", server.url, json.dumps({"n": n}).encode())
                assert response.status_code == 200
                assert response.json() == {
                    "line": "POST /v1/x?a=1 HTTP/1.1",
                    "auth": "Bearer t",
                    "type": "application/json",
                    "body": {"n": n},
                }
            got = (await http.request("GET", server.url)).json()
            assert (got["line"], got["type"], got["body"]) == ("GET /v1/x?a=1 HTTP/1.1", None, None)
            await http.aclose()
            assert server.connections == 1

    asyncio.run(run())


def test_a_cancelled_request_does_not_leave_its_connection_for_the_next() -> None:
    async def slow_first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await read_request(reader)
        if n == 1:
            await asyncio.sleep(0.3)  # the client gives up first; a late reply must not leak
        writer.write(reply(str(n).encode()))
        await writer.drain()
        await reader.read()

    async def run() -> None:
        async with Server(slow_first) as server:
            http = session()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await http.request("POST", server.url, b"{}")
            assert (await http.request("POST", server.url, b"{}")).json() == 2
            await http.aclose()
            assert server.connections == 2

    asyncio.run(run())


def test_a_session_timeout_is_a_timeout_error() -> None:
    async def never(reader: asyncio.StreamReader, _: asyncio.StreamWriter, __: int) -> None:
        await read_request(reader)
        await reader.read()

    async def run() -> None:
        async with Server(never) as server:
            http = LoopSession({}, limit=1, keepalive_s=1.0, timeout_s=0.2)
            with pytest.raises(TimeoutError):
                await http.request("POST", server.url, b"{}")
            await http.aclose()

    asyncio.run(run())


def test_failures_are_named_as_httpx_names_them() -> None:
    async def hang_up(reader: asyncio.StreamReader, _: asyncio.StreamWriter, __: int) -> None:
        await read_request(reader)

    async def run() -> None:
        async with Server(hang_up) as server:
            http = session()
            with pytest.raises(TransportError) as hung:
                await http.request("POST", server.url, b"{}")
            url = server.url
        with pytest.raises(TransportError) as refused:
            await http.request("POST", url, b"{}")
        await http.aclose()
        assert str(hung.value) == (
            "RemoteProtocolError: Server disconnected without sending a response."
        )
        assert str(refused.value).startswith("ConnectError: Cannot connect to host 127.0.0.1")

    asyncio.run(run())


def test_one_session_serves_one_event_loop_after_another() -> None:
    """Connections belong to a loop: a later asyncio.run opens its own."""
    http = session()

    async def once() -> int:
        async with Server(echo_forever) as server:
            return int((await http.request("POST", server.url, b"7")).json()["body"])

    assert asyncio.run(once()) == 7
    assert asyncio.run(once()) == 7
    asyncio.run(http.aclose())


def test_env_proxy_picks_what_httpx_would(no_proxies: pytest.MonkeyPatch) -> None:
    assert env_proxy("http://vllm:8000") is None
    no_proxies.setenv("HTTP_PROXY", "http://proxy:3128")
    assert env_proxy("http://vllm:8000") == "http://proxy:3128"
    assert env_proxy("https://vllm:8000") is None
    no_proxies.setenv("ALL_PROXY", "http://all:3128")
    assert env_proxy("https://vllm:8000") == "http://all:3128"
    no_proxies.setenv("NO_PROXY", "vllm")
    assert env_proxy("http://vllm:8000") is None
    assert env_proxy("http://other:8000") == "http://proxy:3128"
    no_proxies.setenv("HTTP_PROXY", "socks5://proxy:1080")
    with pytest.raises(ProxyNotSupportedError, match="only http:// and https:// proxies"):
        env_proxy("http://other:8000")


def test_a_request_goes_through_the_proxy_it_is_given() -> None:
    """The proxy gets the absolute URL (RFC 9112 absolute-form) and answers for the server."""

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        first, headers, body = await read_request(reader)
        answer = {"line": first, "auth": headers.get("authorization"), "body": body.decode()}
        writer.write(reply(json.dumps(answer).encode()))
        await writer.drain()
        await reader.read()

    async def run() -> None:
        async with Server(proxy) as server:
            http = session()
            response = await http.request("POST", "http://vllm:8000/v1/x", b"{}", server.origin)
            await http.aclose()
        assert response.json() == {
            "line": "POST http://vllm:8000/v1/x HTTP/1.1",
            "auth": "Bearer t",
            "body": "{}",
        }

    asyncio.run(run())


def test_a_tool_call_without_a_reply_in_time_is_a_read_timeout() -> None:
    async def never(reader: asyncio.StreamReader, _: asyncio.StreamWriter, __: int) -> None:
        await read_request(reader)
        await reader.read()

    async def run() -> str:
        async with Server(never) as server:
            retry = RetryPolicy(attempts=2, backoff_s=0.01, timeout_s=0.2)
            client = HttpToolClient(
                server.origin, retry=retry, replicas=ReplicaSet([server.origin])
            )
            try:
                with pytest.raises(ToolServerUnavailableError) as info:
                    await client.call("search", {"query": "x"}, "c1")
            finally:
                await client.aclose()
            assert server.connections == 2
            return str(info.value)

    message = asyncio.run(run())
    assert message.endswith("failed 2 times on /search: ReadTimeout: no reply within 0.2 s")
