"""The MCP session owner shared by every MCP client: `McpSession` and `SessionSlot`.

Why a background task: the SDK's client is a stack of anyio task groups, which must be entered
and left by the same task, while calls come from whichever task steps an episode; and when the
transport fails, anyio cancels the task that entered it. So each session lives in a task of its
own. Calls reach it through a queue and run as child tasks of its task group (concurrently),
each answering through a future. When the session dies, every waiting future fails at once
with ToolServerUnavailableError: no call waits on a dead process. A deadline
(RetryPolicy.timeout_s, plus slack) bounds each wait as a last resort.

Sessions break: a restarted HTTP server forgets its sessions, a stdio process exits or is
killed. The call that finds out raises ToolServerUnavailableError, which the Episode records
as an infrastructure error (no grade) and marks the session broken. The next reset asks its
`SessionSlot` for a live session: the slot finds the current one ended or broken and opens a
new one with the RetryPolicy's bounded retries and backoff. A session that has not failed is
reused without a probe: a reset costs no round trip (a server restarted between episodes is
found by the next episode's first call, which then ends that episode as above). A JSON-RPC
error the server chose to send for one request (bad arguments, an unknown tool) is not a
broken session: the caller gets the MCPError and the model sees it as an error observation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

from envs.client import RetryPolicy
from envs.errors import (
    ToolAuthError,
    ToolInfraError,
    ToolServerStartError,
    ToolServerUnavailableError,
    exception_summary,
)

if TYPE_CHECKING:
    from mcp import Client

T = TypeVar("T")
CLOSE_TIMEOUT_S = 10.0  # the SDK's own stdio shutdown is bounded by about 7 s
DEADLINE_SLACK_S = 5.0  # the SDK's read timeout should fire first; this is the backstop
# Errors the SDK makes up for a session that is gone (the server did not send them).
LOST_SESSION_MESSAGES = ("Session terminated", "Server returned an error response", "SSE stream")


def session_lost(exc: MCPError) -> bool:
    """Whether an MCP error means the session is gone, not that the server refused one request."""
    return exc.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT) or exc.message.startswith(
        LOST_SESSION_MESSAGES
    )


@dataclass
class _Call:
    run: Callable[[Client], Awaitable[Any]]
    answer: asyncio.Future[Any]


class McpSession:
    """One MCP session, owned by one background task (see the module docstring)."""

    def __init__(
        self,
        where: str,
        connect: Callable[[], AbstractAsyncContextManager[Client]],
        timeout_s: float,
        *,
        explain: Callable[[BaseException], ToolInfraError],
        stderr_tail: Callable[[], str] = lambda: "",
        open_timeout_s: float | None = None,
    ) -> None:
        self.where = where  # "MCP server at URL" / "MCP server `command`", for messages
        self.replica: str | None = None  # the replica URL it opened on, where there are several
        self.timeout_s = timeout_s  # per request
        # Opening may include starting a process (a cold interpreter, a Node server): its own
        # bound, so that a short per-request timeout does not make slow starters unusable.
        self.open_timeout_s = open_timeout_s or timeout_s
        self._connect = connect
        self._explain = explain
        self._stderr_tail = stderr_tail
        self._calls: asyncio.Queue[_Call | None] = asyncio.Queue()
        self._waiting: set[asyncio.Future[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self.failure: ToolInfraError | None = None
        self.broken = False  # a request found the session gone: never reused

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def open(self) -> None:
        """Open the session; ToolInfraError (auth, unavailable, start) when it cannot be."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._task = loop.create_task(self._own(ready), name=f"MCP session: {self.where}")
        done, _ = await asyncio.wait({ready}, timeout=self.open_timeout_s)
        if not done:
            ready.cancel()
            tail = self._stderr_tail()
            self._task.cancel()  # still connecting: nothing to close gracefully
            await asyncio.gather(self._task, return_exceptions=True)
            raise ToolServerUnavailableError(
                f"{self.where}: no MCP session after {self.open_timeout_s:g}s{tail}"
            )
        ready.result()

    async def _own(self, ready: asyncio.Future[None]) -> None:
        try:
            async with self._connect() as client, anyio.create_task_group() as group:
                ready.set_result(None)
                while (call := await self._calls.get()) is not None:
                    group.start_soon(self._answer, client, call)
                group.cancel_scope.cancel()  # closing: calls still running are abandoned
        except Exception as exc:  # could not open, or the transport failed under the session
            self.failure = self._explain(exc)
            if not ready.done():
                ready.set_exception(self.failure)
        finally:
            if not ready.done():
                ready.set_exception(ToolServerUnavailableError(f"{self.where}: cancelled"))
            self._fail_waiting()

    @staticmethod
    async def _answer(client: Client, call: _Call) -> None:
        try:
            result = await call.run(client)
        except Exception as exc:  # this call's failure; the session goes on
            if not call.answer.done():
                call.answer.set_exception(exc)
        else:
            if not call.answer.done():
                call.answer.set_result(result)

    def _why(self) -> str:
        """' (what broke it)', from the failure the owner recorded, without repeating `where`."""
        if self.failure is None:
            return ""
        return f" ({str(self.failure).removeprefix(f'{self.where}: ')})"

    def _fail_waiting(self) -> None:
        why = self._why()
        for answer in self._waiting:
            if not answer.done():
                answer.set_exception(
                    ToolServerUnavailableError(f"{self.where}: the MCP session ended{why}")
                )

    async def request(self, run: Callable[[Client], Awaitable[T]], what: str) -> T:
        """`run(client)` in the session. Raises ToolServerUnavailableError when the session is
        gone or does not answer in time, and MCPError when the server refused this request."""
        if not self.alive:
            why = self._why()
            raise ToolServerUnavailableError(f"{self.where}: the MCP session has ended{why}")
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.add(answer)
        self._calls.put_nowait(_Call(run, answer))
        deadline = self.timeout_s + DEADLINE_SLACK_S
        try:
            async with asyncio.timeout(deadline):
                return await answer
        except TimeoutError:
            self.broken = True
            raise ToolServerUnavailableError(
                f"{self.where}: no answer to {what} within {deadline:g}s"
            ) from None
        except MCPError as exc:
            if not session_lost(exc):
                raise
            self.broken = True
            raise ToolServerUnavailableError(
                f"{self.where}: {what} failed: {exc.message}{self._stderr_tail()}"
            ) from None
        except ToolInfraError:
            raise
        except Exception as exc:  # a result the SDK could not read, or a transport bug
            self.broken = True
            raise ToolServerUnavailableError(
                f"{self.where}: {what} failed: {exception_summary(exc)}"
            ) from None
        finally:
            self._waiting.discard(answer)

    @property
    def healthy(self) -> bool:
        """Whether the session may serve the next episode: still open, and no request of its
        found it gone."""
        return self.alive and not self.broken

    async def aclose(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        self._calls.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT_S)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class SessionSlot:
    """At most one live session with one server: reused while it answers, replaced (with the
    RetryPolicy's bounded retries and backoff) when it does not, or on every `live(fresh=True)`.
    Shared by several clients for `isolation: pool` on stdio, hence the lock."""

    def __init__(self, new_session: Callable[[], McpSession], retry: RetryPolicy) -> None:
        self._new_session = new_session
        self.retry = retry
        self._session: McpSession | None = None
        self._lock = asyncio.Lock()

    async def live(self, *, fresh: bool = False) -> McpSession:
        async with self._lock:
            current, self._session = self._session, None
            if current is not None and not fresh and current.healthy:
                self._session = current
                return current
            if current is not None:
                await current.aclose()
            self._session = await self._open()
            return self._session

    async def _open(self) -> McpSession:
        delay = self.retry.backoff_s
        problem: ToolServerUnavailableError | None = None
        tried: list[str] = []  # each session's `where`: several when the server has replicas
        for attempt in range(self.retry.attempts):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            session = self._new_session()
            try:
                await session.open()
                return session
            except (ToolAuthError, ToolServerStartError):  # the same again would fail alike
                raise
            except ToolServerUnavailableError as exc:
                problem = exc
                tried.append(session.where)
        places = list(dict.fromkeys(tried))
        also = f"; tried: {', '.join(places)}" if len(places) > 1 else ""
        raise ToolServerUnavailableError(f"{problem} (tried {self.retry.attempts} times{also})")

    async def aclose(self) -> None:
        async with self._lock:
            current, self._session = self._session, None
            if current is not None:
                await current.aclose()
