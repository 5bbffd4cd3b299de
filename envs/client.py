"""Tool clients: how an episode reaches the tool server, over HTTP, MCP or in-process ASGI.

All speak one small protocol (`begin_episode`, `specs`, `call`, `aclose`). A call answers a
`ToolOutput`: the tool's text and whether the transport flagged it an error (MCP's `is_error`,
the HTTP body's `is_error`). A tool's own refusal is a normal result; only an unreachable,
failing or unauthorised server raises a `ToolInfraError`, after a bounded number of retries
for the transient cases.

The MCP clients (streamable HTTP, and any stdio server started from a command) live in
`envs.mcp_client`; `envs.server_settings.ServerSettings` is the one checked record of how an
environment reaches its server, and `open_tool_client` turns it into a client. `ToolSubset`
narrows any client to the tools a registration names.

A client sends exactly the token it is given, or no Authorization header when it gets none:
it never looks one up itself. Which token an environment presents is decided where the
environment is made (`envs.tool_env.make_tool_env`, `envs.registry`), so toolgym's own token
cannot reach a third party's server by default.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import httpx

from envs.aiohttp_client import (
    LoopSession,
    ProxyNotSupportedError,
    RawResponse,
    TransportError,
    encode_json,
    env_proxy,
    shared_ssl_context,
)
from envs.errors import EnvConfigError, ToolAuthError, ToolServerUnavailableError
from envs.replicas import ReplicaSet, parse_urls, shared_replicas
from envs.server_settings import ServerSettings, no_server


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # total tries per call, the first included
    backoff_s: float = 0.2  # doubled after each failure
    timeout_s: float = 30.0  # per request


# Below `toolgym serve`'s 75 s (toolservers.serve), so the client drops an idle connection
# before the server does, and above a slow model turn, so calls between turns reuse it.
TOOL_KEEPALIVE_S = 60.0
# httpx's default: one client may serve many callers at once (opened only as needed).
_TOOL_CONNECTIONS = 100


@dataclass(frozen=True)
class ToolOutput:
    """One call's answer. `is_error` comes from the transport's own flag, never from the text:
    a third-party tool may well answer "Error: none found" as a normal result."""

    text: str
    is_error: bool = False


class ToolClient(Protocol):
    async def begin_episode(self) -> None:
        """Called by every reset, before anything else: a client with sessions opens a fresh
        one here (isolation: episode) or makes sure its current one still answers."""
        ...

    async def specs(self) -> list[dict[str, Any]]: ...

    async def call(self, name: str, arguments: dict[str, Any], call_id: str) -> ToolOutput: ...

    async def aclose(self) -> None: ...


def first_token(variable: str) -> str | None:
    """The first comma-separated token in environment variable `variable`, or None.

    Servers accept several tokens (to roll a new one out before retiring the old); a client
    presents one.
    """
    configured = [t.strip() for t in os.environ.get(variable, "").split(",") if t.strip()]
    return configured[0] if configured else None


def bearer_headers(token: str | None) -> dict[str, str]:
    """The Authorization header for `token`; none at all without one."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _proxies(urls: Sequence[str]) -> dict[str, str | None]:
    """Each replica's proxy from the environment, as httpx would pick it; looked up once."""
    try:
        return {url: env_proxy(url) for url in urls}
    except ProxyNotSupportedError as exc:
        raise EnvConfigError(str(exc)) from None


class HttpToolClient:
    """The tool HTTP contract over aiohttp, or over httpx with an injected `transport`
    (`httpx.ASGITransport(app)` in-process).

    `base_url` may name several replicas of one stateless server (a list, or comma-separated):
    each request goes to the least busy (`envs.replicas`), and a failed try is retried on
    another replica, within the RetryPolicy's attempts. `replicas` shares the balancing state;
    by default every client of the same URLs in this process shares one."""

    # "httpx": real URLs over httpx too (benchmarks/bench_rollout.py --client httpx compares).
    default_http_client: ClassVar[Literal["aiohttp", "httpx"]] = "aiohttp"

    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        replicas: ReplicaSet | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.replicas = replicas or shared_replicas("http", parse_urls(base_url))
        self._http: LoopSession | httpx.AsyncClient
        self._proxies: dict[str, str | None] = {}
        if transport is None and self.default_http_client == "aiohttp":
            self._proxies = _proxies(self.replicas.urls)
            self._http = LoopSession(
                bearer_headers(token),
                limit=_TOOL_CONNECTIONS,
                keepalive_s=TOOL_KEEPALIVE_S,
                timeout_s=self.retry.timeout_s,
            )
        else:
            self._http = httpx.AsyncClient(
                headers=bearer_headers(token),
                transport=transport,
                timeout=self.retry.timeout_s,
                verify=shared_ssl_context(),
            )
        self._specs: list[dict[str, Any]] | None = None

    async def begin_episode(self) -> None:
        """Nothing to renew: each request stands alone, and the connection pool reconnects."""

    async def _send(
        self, method: str, url: str, path: str, body: dict[str, Any] | None
    ) -> RawResponse | httpx.Response:
        """One try; a TransportError (httpx's, or aiohttp's as ours) when no reply came."""
        if isinstance(self._http, httpx.AsyncClient):
            return await self._http.request(method, url + path, json=body)
        data = encode_json(body) if body is not None else None
        try:
            return await self._http.request(method, url + path, data, self._proxies[url])
        except TimeoutError:
            timeout = self.retry.timeout_s
            raise TransportError(f"ReadTimeout: no reply within {timeout:g} s") from None

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> RawResponse | httpx.Response:
        delay = self.retry.backoff_s
        tried: list[str] = []
        problem = ""
        for _ in range(self.retry.attempts):
            with self.replicas.lease(avoid=tried) as url:
                if url in tried:  # no other replica to fail over to: back off first
                    await asyncio.sleep(delay)
                    delay *= 2
                tried.append(url)
                try:
                    response = await self._send(method, url, path, body)
                except httpx.TransportError as exc:
                    problem = f"{url}: {type(exc).__name__}: {exc}".rstrip(": ")
                    self.replicas.failed(url)
                    continue
                except TransportError as exc:
                    problem = f"{url}: {exc}"
                    self.replicas.failed(url)
                    continue
            if response.status_code == 401:  # a wrong token: every replica would say the same
                raise ToolAuthError(f"tool server at {url} refused the token (401)")
            if response.status_code >= 500:
                problem = f"{url}: HTTP {response.status_code}"
                self.replicas.failed(url)
                continue
            self.replicas.ok(url)
            return response
        raise ToolServerUnavailableError(self._exhausted(path, tried, problem))

    def _exhausted(self, path: str, tried: list[str], problem: str) -> str:
        attempts = self.retry.attempts
        if len(self.replicas) == 1:
            url = self.replicas.urls[0]
            problem = problem.removeprefix(f"{url}: ")  # said once is enough
            return f"tool server at {url} failed {attempts} times on {path}: {problem}"
        names = ", ".join(dict.fromkeys(tried))
        return (
            f"tool servers failed {attempts} times on {path} (replicas tried: {names}); "
            f"last problem at {problem}"
        )

    async def specs(self) -> list[dict[str, Any]]:
        if self._specs is None:
            response = await self._request("GET", "/tools", None)
            self._specs = list(response.json())
        return self._specs

    async def call(self, name: str, arguments: dict[str, Any], call_id: str) -> ToolOutput:
        response = await self._request(
            "POST", f"/{name}", {"arguments": arguments, "call_id": call_id}
        )
        try:
            body = response.json()
        except ValueError:  # a third-party server's HTML error page, or an empty body
            body = {"detail": response.text[:200]}
        if not isinstance(body, dict):
            body = {"detail": body}
        if response.status_code == 404:  # toolgym's servers say which tools exist; keep that
            return ToolOutput(str(body.get("output") or f"Error: unknown tool {name!r}."), True)
        if response.status_code >= 400 or "output" not in body:  # refused (size, shape)
            detail = body.get("detail", body)
            return ToolOutput(f"Error: the tool server refused the call: {detail}", True)
        # Servers of the older contract send no flag: their answers count as successes.
        return ToolOutput(str(body["output"]), body.get("is_error") is True)

    async def aclose(self) -> None:
        await self._http.aclose()


@runtime_checkable
class AnnotatedTools(Protocol):
    """A client that knows its tools' MCP annotations (readOnlyHint, destructiveHint, ...)."""

    async def annotations(self) -> dict[str, dict[str, Any]]: ...


@dataclass(frozen=True)
class ResourceInfo:
    """One resource a server lists (MCP `resources/list`): read-only context by definition."""

    uri: str
    name: str = ""
    mime_type: str | None = None


@runtime_checkable
class ResourceReader(Protocol):
    """A client that can list and read its server's resources (MCP). The model in an episode
    never sees them (it has only tools); the task generator reads them for context."""

    async def resources(self) -> list[ResourceInfo]: ...

    async def read_resource(self, uri: str) -> ToolOutput: ...


class ToolSubset:
    """Another client, offering only the tools a registration names (`tools: [...]`).

    A call to any other tool is refused here and never reaches the server: a model that guesses
    the name of a hidden `write_file` must not be able to use it. A named tool the server does
    not have is a configuration error, reported at the first reset."""

    def __init__(self, inner: ToolClient, names: Sequence[str]) -> None:
        self.inner = inner
        self.names = tuple(dict.fromkeys(names))

    async def begin_episode(self) -> None:
        await self.inner.begin_episode()
        await self.specs()  # checks the names; the inner client caches its listing

    async def specs(self) -> list[dict[str, Any]]:
        specs = await self.inner.specs()
        available = [spec["function"]["name"] for spec in specs]
        missing = [name for name in self.names if name not in available]
        if missing:
            raise EnvConfigError(
                f"tools: the server has no {', '.join(map(repr, missing))} "
                f"(its tools: {', '.join(available) or 'none'})"
            )
        by_name = dict(zip(available, specs, strict=True))
        return [by_name[name] for name in self.names]  # in the order the registration gives

    async def call(self, name: str, arguments: dict[str, Any], call_id: str) -> ToolOutput:
        if name not in self.names:
            offered = ", ".join(self.names)
            return ToolOutput(f"Error: unknown tool {name!r}. Tools: {offered}.", is_error=True)
        return await self.inner.call(name, arguments, call_id)

    async def annotations(self) -> dict[str, dict[str, Any]]:
        if not isinstance(self.inner, AnnotatedTools):
            return {}
        known = await self.inner.annotations()
        return {name: known[name] for name in self.names if name in known}

    async def resources(self) -> list[ResourceInfo]:
        """The inner server's resources: `tools: [...]` narrows tools, not resources."""
        if not isinstance(self.inner, ResourceReader):
            return []
        return await self.inner.resources()

    async def read_resource(self, uri: str) -> ToolOutput:
        if not isinstance(self.inner, ResourceReader):
            return ToolOutput(f"Error: no resource {uri!r}", is_error=True)
        return await self.inner.read_resource(uri)

    async def aclose(self) -> None:
        await self.inner.aclose()


def open_tool_client(
    settings: ServerSettings,
    token: str | None = None,
    *,
    asgi_app: Any = None,
    retry: RetryPolicy | None = None,
) -> ToolClient:
    """The client `settings` describe. `token` is sent as is (None: no Authorization header);
    a stdio server never receives it."""
    client: ToolClient
    if asgi_app is not None:
        transport = httpx.ASGITransport(asgi_app)
        # Its own balancing state: in-process apps share a made-up URL, not a server.
        replicas = ReplicaSet(["http://toolserver"])
        client = HttpToolClient(
            "http://toolserver", token, transport=transport, retry=retry, replicas=replicas
        )
    elif settings.stdio is not None:
        from envs.mcp_client import McpStdioClient

        client = McpStdioClient(settings.stdio, isolation=settings.isolation, retry=retry)
    elif not settings.tools_urls:
        raise EnvConfigError(no_server(settings.transport))
    elif settings.transport == "http":
        client = HttpToolClient(settings.tools_urls, token, retry=retry)
    else:
        from envs.mcp_client import McpHttpClient

        headers = dict(settings.headers)
        client = McpHttpClient(
            settings.tools_urls, token, headers=headers, isolation=settings.isolation, retry=retry
        )
    return ToolSubset(client, settings.tools) if settings.tools else client


def make_tool_client(
    tools_url: str | Sequence[str] | None,
    token: str | None = None,
    *,
    transport: str = "http",
    asgi_app: Any = None,
    retry: RetryPolicy | None = None,
    headers: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    isolation: str = "pool",
    tools: Sequence[str] | None = None,
) -> ToolClient:
    """A client from environment kwargs: a URL (HTTP or MCP), a stdio command, or an ASGI app
    in-process (see `ServerSettings` for the rest)."""
    settings = ServerSettings.of(
        transport,
        tools_url,
        headers=headers,
        command=command,
        env=env,
        cwd=cwd,
        isolation=isolation,
        tools=tools,
        need_url=asgi_app is None,
    )
    return open_tool_client(settings, token, asgi_app=asgi_app, retry=retry)
