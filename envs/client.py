"""Tool clients: how an episode reaches the tool server, over HTTP, MCP or in-process ASGI.

All speak one small protocol (`specs`, `call`, `aclose`). A call answers a `ToolOutput`: the
tool's text, untouched, and whether the transport flagged it an error (MCP's `is_error`, the
HTTP body's `is_error`). A tool's own refusal is a normal result; only an unreachable, failing
or unauthorised server raises a `ToolInfraError`, after a bounded number of retries for the
transient cases.

A client sends exactly the token it is given, or no Authorization header when it gets none:
it never looks one up itself. Which token an environment presents is decided where the
environment is made (`envs.tool_env.make_tool_env`, `envs.registry`), so toolgym's own token
cannot reach a third party's server by default.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from envs.errors import EnvConfigError, ToolAuthError, ToolServerUnavailableError


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # total tries per call, the first included
    backoff_s: float = 0.2  # doubled after each failure
    timeout_s: float = 30.0  # per request


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every client: building one loads the CA bundle (tens of ms), which
    the rollout engine would otherwise pay for each of its hundreds of environments."""
    return ssl.create_default_context()


@dataclass(frozen=True)
class ToolOutput:
    """One call's answer. `is_error` comes from the transport's own flag, never from the text:
    a third-party tool may well answer "Error: none found" as a normal result."""

    text: str
    is_error: bool = False


class ToolClient(Protocol):
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


class HttpToolClient:
    """The tool HTTP contract over httpx; pass `transport=httpx.ASGITransport(app)` in-process."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=bearer_headers(token),
            transport=transport,
            timeout=self.retry.timeout_s,
            verify=shared_ssl_context(),
        )
        self._specs: list[dict[str, Any]] | None = None

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        delay = self.retry.backoff_s
        problem = ""
        for attempt in range(self.retry.attempts):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 401:
                raise ToolAuthError(f"tool server at {self._http.base_url} refused the token (401)")
            if response.status_code >= 500:
                problem = f"HTTP {response.status_code}"
                continue
            return response
        raise ToolServerUnavailableError(
            f"tool server at {self._http.base_url} failed {self.retry.attempts} times on "
            f"{path}: {problem}"
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


class McpToolClient:
    """The same tools over MCP streamable HTTP with the official client.

    The MCP session lives in one background task for the client's lifetime: its anyio task
    groups must be entered and left by the same task, while calls come from whichever task
    steps the episode. Calls travel to that task through a queue.
    """

    def __init__(self, url: str, token: str | None = None, *, retry: RetryPolicy | None = None):
        self.url = url if url.rstrip("/").endswith("/mcp") else url.rstrip("/") + "/mcp"
        self.token = token
        self.retry = retry or RetryPolicy()
        self._requests: asyncio.Queue[tuple[str, tuple[Any, ...], asyncio.Future[Any]] | None]
        self._owner: asyncio.Task[None] | None = None

    async def _submit(self, op: str, *args: Any) -> Any:
        if self._owner is None or self._owner.done():
            self._requests = asyncio.Queue()
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._owner = asyncio.create_task(self._own_session(ready))
            await ready
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._requests.put((op, args, result))
        return await result

    async def _own_session(self, ready: asyncio.Future[None]) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        try:
            async with (
                httpx2.AsyncClient(
                    headers=bearer_headers(self.token), timeout=self.retry.timeout_s
                ) as http,
                Client(streamable_http_client(self.url, http_client=http)) as client,
            ):
                ready.set_result(None)
                while (item := await self._requests.get()) is not None:
                    op, args, result = item
                    try:
                        result.set_result(await getattr(client, op)(*args))
                    except Exception as exc:  # a failed call, the session goes on
                        result.set_exception(exc)
        except BaseException as exc:  # could not connect, or the session broke
            if not ready.done():
                ready.set_exception(self._infra_error(exc))
            else:
                raise

    def _infra_error(self, exc: BaseException) -> Exception:
        if "401" in repr(exc) or "Unauthorized" in repr(exc):
            return ToolAuthError(f"MCP server at {self.url} refused the token")
        return ToolServerUnavailableError(f"cannot open an MCP session at {self.url}: {exc!r}")

    async def specs(self) -> list[dict[str, Any]]:
        listed = await self._submit("list_tools")
        return [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description or "",
                    "parameters": t.input_schema,
                },
            }
            for t in listed.tools
        ]

    async def call(self, name: str, arguments: dict[str, Any], call_id: str) -> ToolOutput:
        try:
            result = await self._submit("call_tool", name, arguments)
        except Exception as exc:  # transport failure mid-session
            raise ToolServerUnavailableError(f"MCP call {name} failed: {exc!r}") from None
        text = "".join(getattr(block, "text", "") for block in result.content)
        return ToolOutput(text, bool(result.is_error))

    async def aclose(self) -> None:
        if self._owner is not None and not self._owner.done():
            await self._requests.put(None)
            await self._owner
        self._owner = None


def make_tool_client(
    tools_url: str | None,
    token: str | None = None,
    *,
    transport: str = "http",
    asgi_app: Any = None,
    retry: RetryPolicy | None = None,
) -> ToolClient:
    """A client from environment kwargs: a URL (HTTP or MCP), or an ASGI app in-process.

    `token` is sent as is; None means no Authorization header.
    """
    if asgi_app is not None:
        return HttpToolClient(
            "http://toolserver", token, transport=httpx.ASGITransport(asgi_app), retry=retry
        )
    if not tools_url:
        raise EnvConfigError("no tool server: pass tools_url=URL (or an ASGI app in-process)")
    if transport == "mcp":
        return McpToolClient(tools_url, token, retry=retry)
    if transport != "http":
        raise EnvConfigError(f"unknown tool transport {transport!r}: use 'http' or 'mcp'")
    return HttpToolClient(tools_url, token, retry=retry)
