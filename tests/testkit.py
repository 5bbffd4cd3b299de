"""Test helpers shared across test folders: live servers on 127.0.0.1, the test tokens, and
waits that cannot hang.

A module of its own (not conftest.py) so that folders with their own conftest can import it.

Every wait in the tests goes through `wait_until` / `wait_until_async`: besides a deadline, each
watches the thing that should make its condition true (a thread, a process, an asyncio task, a
container). When that thing dies the wait fails at once, naming it and saying how it died (its
exception, its exit code and log tail); a wait that only polled would spin until the deadline,
or forever without one.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

TOKENS = ("token-current-0123456789", "token-previous-abcdefghij")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WaitFailed(AssertionError):
    """A wait gave up: its deadline passed, or what it waited on died first."""


class Died(Exception):
    """Raised by a watch when its subject is no longer running (`__cause__`: its exception)."""


Watch = Callable[[], None]  # returns while its subject runs; raises Died once it has stopped
LOG_TAIL_CHARS = 3000


class Worker(threading.Thread):
    """A daemon thread that keeps what its target raised, so a watch can re-raise it (a plain
    Thread only prints it to stderr, where a waiting test never sees it)."""

    def __init__(self, target: Callable[[], object], *, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.work = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # SystemExit too: uvicorn exits when it cannot bind
            self.error = exc


def start_worker(target: Callable[[], object], *, name: str) -> Worker:
    worker = Worker(target, name=name)
    worker.start()
    return worker


def thread_alive(worker: Worker) -> Watch:
    def watch() -> None:
        if worker.is_alive():
            return
        if worker.error is not None:
            raise Died(f"thread {worker.name!r} raised {worker.error!r}") from worker.error
        raise Died(f"thread {worker.name!r} returned")

    return watch


def task_alive(task: asyncio.Task[Any], *, name: str) -> Watch:
    def watch() -> None:
        if not task.done():
            return
        if task.cancelled():
            raise Died(f"task {name!r} was cancelled")
        error = task.exception()
        if error is not None:
            raise Died(f"task {name!r} raised {error!r}") from error
        raise Died(f"task {name!r} returned {task.result()!r}")

    return watch


def process_alive(process: subprocess.Popen[Any], *, name: str, log: Path | None = None) -> Watch:
    """`log`: where the process writes its output; its tail goes into the failure."""

    def watch() -> None:
        code = process.poll()
        if code is None:
            return
        raise Died(f"process {name!r} exited with code {code}{log_tail(log)}")

    return watch


def log_tail(log: Path | None, chars: int = LOG_TAIL_CHARS) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace")
    return f"; the end of {log}:\n{text[-chars:]}" if text else f"; {log} is empty"


class _Wait:
    """The state of one wait, shared by the blocking and the asyncio loops."""

    def __init__(
        self,
        predicate: Callable[[], bool],
        what: str,
        alive: Watch | Sequence[Watch],
        timeout_s: float,
    ) -> None:
        self.predicate = predicate
        self.what = what
        self.watches = [alive] if callable(alive) else list(alive)
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s

    def done(self) -> bool:
        """True once the predicate holds; raises WaitFailed when it never can or time is up."""
        if self.predicate():
            return True
        for watch in self.watches:
            try:
                watch()
            except Died as died:
                # It may have done its work and then stopped between the two checks.
                if self.predicate():
                    return True
                raise WaitFailed(f"{died} while waiting for {self.what}") from died.__cause__
        if time.monotonic() > self.deadline:
            raise WaitFailed(f"gave up after {self.timeout_s:g}s waiting for {self.what}")
        return False


def wait_until(
    predicate: Callable[[], bool],
    *,
    what: str,
    alive: Watch | Sequence[Watch] = (),
    timeout_s: float = 60.0,
    interval_s: float = 0.02,
) -> None:
    """Block until `predicate()` is true. Fails (WaitFailed) as soon as a watch in `alive` says
    its subject died, or after `timeout_s`. `what` names the awaited condition in the failure."""
    wait = _Wait(predicate, what, alive, timeout_s)
    while not wait.done():
        time.sleep(interval_s)


async def wait_until_async(
    predicate: Callable[[], bool],
    *,
    what: str,
    alive: Watch | Sequence[Watch] = (),
    timeout_s: float = 60.0,
    interval_s: float = 0.02,
) -> None:
    """wait_until for a coroutine: sleeps with asyncio.sleep, so the watched tasks can run."""
    wait = _Wait(predicate, what, alive, timeout_s)
    while not wait.done():
        await asyncio.sleep(interval_s)


@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_server(app: ASGIApp, graceful_shutdown_s: int | None = 1) -> LiveServer:
    """Run `app` under a real uvicorn on 127.0.0.1 in a background thread. Requests still in
    flight at stop() get `graceful_shutdown_s` to finish (hung ones are then dropped)."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=graceful_shutdown_s,
    )
    server = uvicorn.Server(config)
    thread = start_worker(lambda: asyncio.run(server.serve()), name=f"uvicorn:{port}")
    wait_until(
        lambda: server.started,
        what=f"the server on port {port} to start",
        alive=thread_alive(thread),
        timeout_s=30,
    )
    return LiveServer(url=f"http://127.0.0.1:{port}", server=server, thread=thread)


def text_tool_spec(name: str, description: str) -> dict[str, Any]:
    """An OpenAI-style function spec taking one string argument, `text`."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
        },
    }


def tool_contract_app(
    specs: list[dict[str, Any]], answer: Callable[[str, dict[str, Any]], JSONResponse]
) -> Starlette:
    """A third party's server on the tool HTTP contract: GET /tools lists `specs`; POST /<name>
    answers with `answer(name, body)`, or 404 for a tool not listed."""
    listed = {spec["function"]["name"] for spec in specs}

    async def tools(request: Request) -> JSONResponse:
        return JSONResponse(specs)

    async def call(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if name not in listed:
            return JSONResponse({"detail": "unknown tool"}, status_code=404)
        return answer(name, await request.json())

    return Starlette(
        routes=[Route("/tools", tools, methods=["GET"]), Route("/{name}", call, methods=["POST"])]
    )


def mcp_streamable_app(server: Any) -> Starlette:
    """An MCPServer over streamable HTTP at /mcp, stateless, as a third party would serve it."""
    app: Starlette = server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True, host="127.0.0.1"
    )
    return app


def answers_health(base_url: str, timeout_s: float = 5) -> bool:
    """Whether a toolgym server at `base_url` says it is healthy (a refused connection: no)."""
    try:
        return httpx.get(f"{base_url}/health", timeout=timeout_s).status_code == 200
    except httpx.TransportError:
        return False


def auth(token: str = TOKENS[0]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
