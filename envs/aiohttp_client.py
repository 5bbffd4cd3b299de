"""aiohttp for the rollout's hot path: the policy's chat completions and the tool clients' calls.

Why aiohttp: under the rollout engine at 256 concurrent episodes, httpx (with httpcore, h11,
anyio, and a readability probe of every pooled connection per request) took ~65% of the
engine's CPU; aiohttp parses HTTP in C and keeps its pool in O(1) per request (see
benchmarks/README.md, rollout). httpx stays wherever a caller hands in a transport: in-process
ASGI apps, tests' mock transports.

- One `aiohttp.ClientSession` per running event loop (`LoopSession`): a session belongs to the
  loop it was made in, and callers may run several loops one after another (`asyncio.run` per
  phase).
- Keep-alive: an idle connection is dropped after `keepalive_s`, which must stay below the
  server's own idle timeout; otherwise a request can go out on a connection the server is
  closing, and cost a retry. `toolgym serve` keeps idle connections 75 s, vLLM 5 s.
- Proxies: the one httpx would take from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY,
  minus NO_PROXY), resolved once per server by the caller (`env_proxy`). aiohttp's own
  `trust_env` ignores ALL_PROXY and reads the environment and ~/.netrc in worker threads on
  every request.
- A failure to reach a server or read its reply is a `TransportError` whose message names the
  httpx class of the same failure (ConnectError, ReadError, RemoteProtocolError, ReadTimeout),
  so errors read as they did over httpx.
- Replies are decoded by pydantic-core's JSON parser (already locked, through pydantic): on a
  completion with its token ids and logprobs, 3x faster than `json.loads` (74 vs 227 us for
  12 KB), and decoding was the largest item of the engine's CPU per model call left.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pydantic_core

JSON_HEADERS = {"Content-Type": "application/json"}
# Checked in order: the first class that matches names the failure.
_HTTPX_NAMES: tuple[tuple[type[BaseException], str], ...] = (
    (aiohttp.ClientConnectorError, "ConnectError"),
    (aiohttp.ServerDisconnectedError, "RemoteProtocolError"),
    (aiohttp.ClientPayloadError, "ReadError"),
    (aiohttp.ClientResponseError, "RemoteProtocolError"),  # a reply that is not HTTP
    (aiohttp.ClientOSError, "ReadError"),
)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every client: building one loads the CA bundle (tens of ms), which
    the rollout engine would otherwise pay for each of its hundreds of environments."""
    return ssl.create_default_context()


class TransportError(Exception):
    """The server could not be reached, or gave no complete HTTP reply in time."""


class ProxyNotSupportedError(ValueError):
    """The environment names a proxy aiohttp cannot use (SOCKS)."""


@dataclass(frozen=True)
class RawResponse:
    """A reply read whole; reads like an httpx.Response where callers look."""

    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as Python values, as `json.loads` gives them (ValueError when not JSON)."""
        return pydantic_core.from_json(self.content)


def encode_json(payload: dict[str, Any]) -> bytes:
    """A request body, byte for byte what httpx's `json=` sends."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def env_proxy(url: str) -> str | None:
    """The proxy httpx would send requests for `url` through, from the environment, or None."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    if urlsplit(proxy).scheme not in ("http", "https"):
        raise ProxyNotSupportedError(
            f"proxy {proxy!r} for {url}: only http:// and https:// proxies are supported"
        )
    return proxy


def describe(exc: BaseException) -> str:
    """`Name: detail`, with httpx's name for the failure."""
    name = next((n for cls, n in _HTTPX_NAMES if isinstance(exc, cls)), type(exc).__name__)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{name}: Server disconnected without sending a response."
    return f"{name}: {exc}".rstrip(": ")


class LoopSession:
    """An aiohttp session for whichever event loop is running; at most `limit` connections."""

    def __init__(
        self,
        headers: Mapping[str, str],
        *,
        limit: int,
        keepalive_s: float,
        timeout_s: float | None = None,
    ) -> None:
        self._headers = dict(headers)
        self._limit = limit
        self._keepalive_s = keepalive_s
        # None: no timer of aiohttp's own (the caller bounds the call itself).
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connector(self) -> aiohttp.BaseConnector | None:
        """The current loop's connection pool, if one was made (for tests and diagnostics)."""
        return self._session.connector if self._session is not None else None

    async def _here(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            await self._forget()
            connector = aiohttp.TCPConnector(
                limit=self._limit, keepalive_timeout=self._keepalive_s, ssl=shared_ssl_context()
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, timeout=self._timeout
            )
            self._loop = loop
        return self._session

    async def _forget(self) -> None:
        """Let go of a session made in an earlier loop."""
        session, loop = self._session, self._loop
        self._session = self._loop = None
        if session is None or loop is None:
            return
        if loop.is_closed():
            await session.close()  # marks it closed; the sockets go with their transports
        else:  # another live loop: closing from here would touch that loop's futures
            session.detach()

    async def request(
        self, method: str, url: str, body: bytes | None = None, proxy: str | None = None
    ) -> RawResponse:
        """`body` is sent as JSON. Raises TransportError, or TimeoutError past `timeout_s`."""
        session = await self._here()
        headers = JSON_HEADERS if body is not None else None
        try:
            async with session.request(
                method, url, data=body, headers=headers, proxy=proxy
            ) as response:
                return RawResponse(response.status, await response.read())
        except TimeoutError:  # aiohttp's timeouts are ClientErrors too: keep them apart
            raise
        except aiohttp.ClientError as exc:
            raise TransportError(describe(exc)) from exc

    async def aclose(self) -> None:
        session = self._session
        if session is not None and self._loop is asyncio.get_running_loop():
            self._session = self._loop = None
            await session.close()
        else:
            await self._forget()
