"""MCP tool clients: streamable HTTP (`McpHttpClient`) and stdio (`McpStdioClient`).

Both stand on the session owner of `envs.mcp_session` (why a background task, what happens
when a session breaks); what differs is where a session comes from. Over HTTP each client keeps
its own session (`isolation: pool`) or opens one per reset (`episode`). Over stdio a session is
a process: shared by every client of the same command in one event loop (`pool`, refcounted in
`envs.stdio.SharedSlots`), or started anew at every reset (`episode`).

Results are rendered for the model by `envs.mcp_content`; annotations are kept apart from the
OpenAI-shaped specs, which go into chat templates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, ListResourcesResult, ListToolsResult, ReadResourceResult, Tool

from envs.client import ResourceInfo, RetryPolicy, ToolOutput, bearer_headers
from envs.errors import (
    ToolAuthError,
    ToolInfraError,
    ToolServerUnavailableError,
    exception_summary,
)
from envs.mcp_content import render_resource, render_result
from envs.mcp_session import McpSession, SessionSlot
from envs.replicas import ReplicaSet, parse_urls, shared_replicas
from envs.stdio import SharedSlots, StdioCommand, StdioLaunch

if TYPE_CHECKING:
    from mcp import Client

MAX_TOOL_PAGES = 100
STDIO_START_TIMEOUT_S = 60.0  # a cold `toolgym serve` takes seconds on a busy 2-core machine


async def _all_tools(client: Client) -> list[Tool]:
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        page: ListToolsResult = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


async def _all_resources(client: Client) -> list[ResourceInfo]:
    """Every listed resource; none when the server does not declare the capability."""
    capabilities = client.server_capabilities
    if capabilities is None or capabilities.resources is None:
        return []
    found: list[ResourceInfo] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        page: ListResourcesResult = await client.list_resources(cursor=cursor)
        found += [ResourceInfo(str(r.uri), r.name, r.mime_type) for r in page.resources]
        cursor = page.next_cursor
        if cursor is None:
            break
    return found


class McpClient:
    """The ToolClient protocol over MCP sessions; subclasses say where sessions come from."""

    def __init__(self, where: str, retry: RetryPolicy | None) -> None:
        self.where = where
        self.retry = retry or RetryPolicy()
        self._session: McpSession | None = None
        self._tools: list[Tool] | None = None

    async def _next_session(self) -> McpSession:
        raise NotImplementedError

    async def begin_episode(self) -> None:
        self._session = await self._next_session()

    async def _current(self) -> McpSession:
        if self._session is None:
            await self.begin_episode()
        assert self._session is not None
        return self._session

    async def listed_tools(self) -> list[Tool]:
        """The server's tools as it lists them (fetched once: a server's tools are fixed)."""
        if self._tools is None:
            session = await self._current()
            try:
                self._tools = await session.request(_all_tools, "tools/list")
            except MCPError as exc:
                raise ToolServerUnavailableError(
                    f"{session.where}: tools/list failed: {exc.message}"
                ) from None
        return self._tools

    async def specs(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description or "",
                    "parameters": tool.input_schema,
                },
            }
            for tool in await self.listed_tools()
        ]

    async def annotations(self) -> dict[str, dict[str, Any]]:
        """Tool name -> its MCP annotations (readOnlyHint, ...) as sent, {} when it has none.
        Kept out of `specs()`: those go into chat templates."""
        return {
            tool.name: (
                tool.annotations.model_dump(by_alias=True, exclude_none=True)
                if tool.annotations
                else {}
            )
            for tool in await self.listed_tools()
        }

    async def resources(self) -> list[ResourceInfo]:
        """The server's resources (`resources/list`), [] when it offers none."""
        session = await self._current()
        try:
            return await session.request(_all_resources, "resources/list")
        except MCPError:  # declared but refused: nothing to read
            return []

    async def read_resource(self, uri: str) -> ToolOutput:
        session = await self._current()

        async def run(client: Client) -> ReadResourceResult:
            return await client.read_resource(uri)

        try:
            result = await session.request(run, f"reading {uri}")
        except MCPError as exc:
            return ToolOutput(f"Error: {exc.message}", is_error=True)
        return ToolOutput(render_resource(result))

    async def call(self, name: str, arguments: dict[str, Any], call_id: str) -> ToolOutput:
        session = await self._current()

        async def run(client: Client) -> CallToolResult:
            timeout = self.retry.timeout_s  # the SDK gives up (and says so to the server)
            return await client.call_tool(name, arguments, read_timeout_seconds=timeout)

        try:
            result = await session.request(run, f"the call to {name}")
        except MCPError as exc:  # the server answered this call with a JSON-RPC error
            return ToolOutput(f"Error: {exc.message}", is_error=True)
        return render_result(result)


def mcp_endpoint(url: str) -> str:
    """`http://host:8081` and `http://host:8081/mcp` both mean the server's MCP endpoint."""
    return url if url.rstrip("/").endswith("/mcp") else url.rstrip("/") + "/mcp"


class McpHttpClient(McpClient):
    """MCP over streamable HTTP. `isolation: pool` keeps one session per client (reopened when
    it breaks); `episode` opens a fresh one at every reset, so a stateful server starts over.

    `url` may name several replicas (a list, or comma-separated). A session is state on one
    server, so the balancing is per session: each new session opens on the replica with the
    fewest sessions open (`envs.replicas`, shared by every client of the same URLs), and one
    that cannot open there, or that broke, cools that replica down; the next try opens on
    another."""

    def __init__(
        self,
        url: str | Sequence[str],
        token: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        isolation: str = "pool",
        retry: RetryPolicy | None = None,
        replicas: ReplicaSet | None = None,
    ) -> None:
        endpoints = tuple(mcp_endpoint(u) for u in parse_urls(url))
        self.replicas = replicas or shared_replicas("mcp", endpoints)
        super().__init__(f"MCP server at {', '.join(self.replicas.urls)}", retry)
        self.headers = {**(headers or {}), **bearer_headers(token)}
        self.isolation = isolation
        self._slot = SessionSlot(self._new_session, self.retry)

    def _new_session(self) -> McpSession:
        # The replica is chosen when the session's task connects (`_connect`), so sessions
        # opened together each see the ones before them counted.
        session = McpSession(
            self.where,
            lambda: self._connect(session),
            self.retry.timeout_s,
            explain=lambda exc: self._explain(session.where, exc),
        )
        return session

    @asynccontextmanager
    async def _connect(self, session: McpSession) -> AsyncIterator[Client]:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        opened = False
        with self.replicas.lease() as url:  # one session counted open on `url` till it ends
            session.where, session.replica = f"MCP server at {url}", url
            try:
                async with (
                    httpx2.AsyncClient(headers=self.headers, timeout=self.retry.timeout_s) as http,
                    Client(streamable_http_client(url, http_client=http)) as client,
                ):
                    self.replicas.ok(url)
                    opened = True
                    yield client
            except Exception as exc:  # could not open, or the server went away under it
                if not refused_token(exc):
                    self.replicas.failed(url)
                raise
            except asyncio.CancelledError:  # McpSession.open gave up waiting: no answer there
                if not opened:
                    self.replicas.failed(url)
                raise

    @staticmethod
    def _explain(where: str, exc: BaseException) -> ToolInfraError:
        if isinstance(exc, ToolInfraError):
            return exc
        if refused_token(exc):
            return ToolAuthError(f"{where} refused the token")
        return ToolServerUnavailableError(f"{where}: {exception_summary(exc)}")

    async def _next_session(self) -> McpSession:
        current = self._session
        # A request found it gone while its transport still stood (no answer in time, a server
        # that forgot it): `_connect` saw nothing, so the replica is told about it here.
        if current is not None and current.broken and current.failure is None and current.replica:
            self.replicas.failed(current.replica)
        return await self._slot.live(fresh=self.isolation == "episode")

    async def aclose(self) -> None:
        self._session = None
        await self._slot.aclose()


def refused_token(exc: BaseException) -> bool:
    return "401" in repr(exc) or "Unauthorized" in repr(exc)


_POOL: SharedSlots[SessionSlot] = SharedSlots()


def stdio_slot(command: StdioCommand, retry: RetryPolicy) -> SessionSlot:
    """A slot whose sessions each start a new process of `command`."""
    where = f"MCP server `{command.display()}`"

    def new_session() -> McpSession:
        launch = StdioLaunch(command)
        return McpSession(
            where,
            launch.client,
            retry.timeout_s,
            explain=lambda exc: stdio_failure(where, exc, launch),
            stderr_tail=launch.stderr_tail,
            open_timeout_s=max(retry.timeout_s, STDIO_START_TIMEOUT_S),
        )

    return SessionSlot(new_session, retry)


def stdio_failure(where: str, exc: BaseException, launch: StdioLaunch) -> ToolInfraError:
    if isinstance(exc, ToolInfraError):
        return exc
    return ToolServerUnavailableError(f"{where}: {exception_summary(exc)}{launch.stderr_tail()}")


class McpStdioClient(McpClient):
    """A stdio MCP server started from a command. `isolation: pool`: one process shared by every
    client of the same command in this event loop, started by the first that needs it and
    stopped with the last; `episode`: a new process for every reset, so no episode sees
    another's writes."""

    def __init__(
        self, command: StdioCommand, *, isolation: str = "pool", retry: RetryPolicy | None = None
    ) -> None:
        super().__init__(f"MCP server `{command.display()}`", retry)
        self.command = command
        self.isolation = isolation
        self._slot: SessionSlot | None = None

    @property
    def shared(self) -> bool:
        return self.isolation == "pool"

    async def _next_session(self) -> McpSession:
        if self._slot is None:

            def make() -> SessionSlot:
                return stdio_slot(self.command, self.retry)

            self._slot = _POOL.acquire(self.command, make) if self.shared else make()
        return await self._slot.live(fresh=not self.shared)

    async def aclose(self) -> None:
        slot, self._slot, self._session = self._slot, None, None
        if slot is None:
            return
        if self.shared:
            await _POOL.release(self.command)
        else:
            await slot.aclose()
