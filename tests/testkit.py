"""Test helpers shared across test folders: live servers on 127.0.0.1 and the test tokens.

A module of its own (not conftest.py) so that folders with their own conftest can import it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

TOKENS = ("token-current-0123456789", "token-previous-abcdefghij")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            break
        if not thread.is_alive():
            raise RuntimeError("server thread died at start-up")
        threading.Event().wait(0.025)
    else:
        raise RuntimeError("server did not start")
    return LiveServer(url=f"http://127.0.0.1:{port}", server=server, thread=thread)


def auth(token: str = TOKENS[0]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
