"""A small HTTP/1.1 client for JSON POSTs to known servers: the policy's hot path.

Why not httpx here: under the rollout engine at 256 concurrent episodes, httpx with httpcore,
h11 and anyio took about 40% of the engine's CPU for the policy's requests alone (~1.5-2 ms
per request: request building, h11 state machine, anyio cancel scopes, a readability probe of
every pooled connection per request; see benchmarks/README.md). This client does what
`OpenAIPolicy` needs and nothing more, at a small fraction of that: POST a JSON body over
keep-alive connections (plain or TLS), read a Content-Length or chunked reply. No proxies,
redirects, cookies or compression: `OpenAIPolicy` keeps httpx wherever those could matter (a
proxy configured for the URL, an injected httpx transport).

Timeouts are the caller's (`asyncio.timeout` around the call); a call cancelled midway closes
its connection, so a half-read reply is never reused. Errors are `HttpError` subclasses named
as httpx names them (ConnectError, ReadError, RemoteProtocolError), so messages read the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

_STREAM_LIMIT = 1 << 20  # longest header block accepted (asyncio's default is 64 KiB)


class JsonResponse(Protocol):
    """What the policy reads of a reply; httpx.Response has it too."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


@dataclass(frozen=True)
class RawResponse:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class HttpError(Exception):
    """The server could not be reached or did not answer in HTTP."""


class ConnectError(HttpError):
    pass


class ReadError(HttpError):
    pass


class RemoteProtocolError(HttpError):
    pass


@dataclass(frozen=True)
class _Origin:
    host: str
    port: int
    tls: bool
    host_header: str


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self, now: float, expiry_s: float) -> bool:
        """Not closed by the server while idle (EOF already seen), and not idle too long."""
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and now - self.idle_since < expiry_s
        )

    def close(self) -> None:
        # RuntimeError: its loop is closed (an earlier asyncio.run); the socket then goes with
        # the transport object.
        with contextlib.suppress(RuntimeError):
            self.writer.close()


@dataclass
class _Pool:
    """Idle keep-alive connections per origin, and the cap on requests in flight."""

    slots: asyncio.Semaphore
    idle: dict[_Origin, list[_Connection]] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None


class Http1Client:
    """POST JSON bytes to `url`; at most `max_connections` requests (and connections) at once."""

    def __init__(
        self,
        headers: dict[str, str],
        *,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry_s: float = 5.0,  # httpx's default; servers close idle ones near it
    ) -> None:
        self._static = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._max = max_connections
        self._ssl = ssl_context
        self._expiry = keepalive_expiry_s
        self._origins: dict[str, tuple[_Origin, str]] = {}
        self._pool = _Pool(asyncio.Semaphore(max_connections))
        self._closed = False

    def _target(self, url: str) -> tuple[_Origin, str]:
        """(origin, request path) of `url`, parsed once per distinct URL."""
        known = self._origins.get(url)
        if known is None:
            parts = urlsplit(url)
            tls = parts.scheme == "https"
            host = parts.hostname or ""
            port = parts.port or (443 if tls else 80)
            host_header = parts.netloc.rsplit("@", 1)[-1]
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            known = self._origins[url] = (_Origin(host, port, tls, host_header), path)
        return known

    def _pool_here(self) -> _Pool:
        """The pool of the running loop: connections and semaphores belong to one loop, and a
        caller may run several loops one after the other (asyncio.run per phase)."""
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool.loop is not loop:
            if pool.loop is not None:
                for idle in pool.idle.values():
                    for connection in idle:
                        connection.close()
                pool = self._pool = _Pool(asyncio.Semaphore(self._max))
            pool.loop = loop
        return pool

    async def post_json(self, url: str, body: bytes) -> RawResponse:
        origin, path = self._target(url)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {origin.host_header}\r\n{self._static}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        message = head.encode("latin-1") + body
        pool = self._pool_here()
        async with pool.slots:
            connection = self._take_idle(pool, origin)
            if connection is not None:
                try:
                    return await self._exchange(pool, origin, connection, message)
                except _StaleConnection:
                    pass  # closed by the server as we reused it: nothing was answered
            connection = await self._connect(origin)
            try:
                return await self._exchange(pool, origin, connection, message)
            except _StaleConnection:
                raise RemoteProtocolError(
                    "Server disconnected without sending a response."
                ) from None

    def _take_idle(self, pool: _Pool, origin: _Origin) -> _Connection | None:
        idle = pool.idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: least likely to have expired
            if connection.usable(now, self._expiry):
                return connection
            connection.close()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(
                origin.host,
                origin.port,
                ssl=self._ssl if origin.tls else None,
                limit=_STREAM_LIMIT,
            )
        except OSError as exc:  # refused, unresolvable, TLS handshake (ssl.SSLError)
            raise ConnectError(str(exc) or type(exc).__name__) from exc
        return _Connection(reader, writer)

    async def _exchange(
        self, pool: _Pool, origin: _Origin, connection: _Connection, message: bytes
    ) -> RawResponse:
        """Send one request, read its reply; the connection goes back to the pool if reusable."""
        try:
            connection.writer.write(message)
            status, keep_alive, content = await _read_response(connection.reader)
        except _StaleConnection:
            connection.close()
            raise
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            connection.close()
            raise ReadError(str(exc) or type(exc).__name__) from exc
        except ValueError as exc:  # a length or chunk size that is not a number
            connection.close()
            raise RemoteProtocolError(f"malformed reply: {exc}") from None
        except BaseException:  # cancelled (timeout), or RemoteProtocolError: never reuse it
            connection.close()
            raise
        if keep_alive and not self._closed:
            connection.idle_since = time.monotonic()
            pool.idle.setdefault(origin, []).append(connection)
        else:
            connection.close()
        return RawResponse(status, content)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._pool.idle.values():
            for connection in idle:
                connection.close()
        self._pool.idle.clear()


class _StaleConnection(Exception):
    """The connection ended before any byte of the reply: safe to try once on a fresh one."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """(status, whether the connection stays open, body) of one HTTP/1.x reply."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _StaleConnection from None
            raise
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        try:
            status = int(rest[:3])
        except ValueError:
            raise RemoteProtocolError(f"malformed status line {lines[0][:80]!r}") from None
        if not 100 <= status < 200:  # informational replies (100 Continue) precede the real one
            break
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    if status in (204, 304):
        return status, keep_alive, b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, keep_alive, await _read_chunked(reader)
    length = headers.get("content-length")
    if length is None:  # delimited by the end of the connection
        return status, False, await reader.read()
    return status, keep_alive, await reader.readexactly(int(length))


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk
