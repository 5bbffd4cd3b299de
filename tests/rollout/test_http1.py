"""rollout.http1 against scripted raw servers: keep-alive, chunked replies, closed connections."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from rollout.http1 import ConnectError, Http1Client, RemoteProtocolError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


def reply(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    first, *lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
    body = await reader.readexactly(int(headers["content-length"]))
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
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/x?a=1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while True:
        first, headers, body = await read_request(reader)
        answer = {"line": first, "auth": headers.get("authorization"), "body": json.loads(body)}
        writer.write(reply(json.dumps(answer).encode()))
        await writer.drain()


def client() -> Http1Client:
    return Http1Client({"Authorization": "Bearer t"}, max_connections=4)


def test_requests_share_one_keep_alive_connection() -> None:
    async def run() -> None:
        async with Server(echo_forever) as server:
            http = client()
            for n in range(3):
                response = await http.post_json(server.url, json.dumps({"n": n}).encode())
                assert response.status_code == 200
                assert response.json() == {
                    "line": "POST /v1/x?a=1 HTTP/1.1",
                    "auth": "Bearer t",
                    "body": {"n": n},
                }
            await http.aclose()
            assert server.connections == 1

    asyncio.run(run())


def test_a_chunked_reply_is_read_whole() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b'6\r\n{"a": \r\n3;ext=1\r\n12}\r\n0\r\nX-Trailer: 1\r\n\r\n')
        await writer.drain()
        await reader.read()

    async def run() -> None:
        async with Server(chunked) as server:
            http = client()
            response = await http.post_json(server.url, b"{}")
            assert (response.status_code, response.json(), response.text) == (
                503,
                {"a": 12},
                '{"a": 12}',
            )
            await http.aclose()

    asyncio.run(run())


def test_connections_the_server_closes_are_not_reused() -> None:
    """Told `Connection: close`, or closed silently while idle: the next request reconnects."""

    async def one_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(reply(b"[]", "Connection: close") if n == 1 else reply(b"[]"))
        await writer.drain()  # then the handler returns and the server closes the connection

    async def run() -> None:
        async with Server(one_each) as server:
            http = client()
            for _ in range(3):
                assert (await http.post_json(server.url, b"{}")).json() == []
                await asyncio.sleep(0.05)  # the close of the idle connection arrives
            await http.aclose()
            assert server.connections == 3

    asyncio.run(run())


def test_a_reused_connection_closed_in_flight_is_retried_once_on_a_fresh_one() -> None:
    """The server closes an idle connection just as it is reused (keep-alive expiry race):
    nothing was answered, so the request goes out again on a new connection."""

    async def close_second(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await read_request(reader)
        writer.write(reply(b"1"))
        await writer.drain()
        if n == 1:
            await read_request(reader)  # the second request: closed without an answer
            return
        await asyncio.sleep(1)

    async def run() -> None:
        async with Server(close_second) as server:
            http = client()
            assert (await http.post_json(server.url, b"{}")).json() == 1
            assert (await http.post_json(server.url, b"{}")).json() == 1
            await http.aclose()
            assert server.connections == 2

    asyncio.run(run())


def test_a_fresh_connection_closed_without_a_reply_is_an_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, _: asyncio.StreamWriter, __: int) -> None:
        await read_request(reader)

    async def run() -> None:
        async with Server(hang_up) as server:
            http = client()
            with pytest.raises(RemoteProtocolError, match="without sending a response"):
                await http.post_json(server.url, b"{}")
            await http.aclose()

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
            http = client()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await http.post_json(server.url, b"{}")
            assert (await http.post_json(server.url, b"{}")).json() == 2
            await http.aclose()

    asyncio.run(run())


def test_no_server_is_a_connect_error() -> None:
    async def run() -> None:
        async with Server(echo_forever) as server:
            url = server.url
        http = client()
        with pytest.raises(ConnectError):
            await http.post_json(url, b"{}")

    asyncio.run(run())


def test_one_client_serves_one_event_loop_after_another() -> None:
    """Connections belong to a loop: a later asyncio.run opens its own."""
    http = client()

    async def once() -> int:
        async with Server(echo_forever) as server:
            return int((await http.post_json(server.url, b"7")).json()["body"])

    assert asyncio.run(once()) == 7
    assert asyncio.run(once()) == 7
