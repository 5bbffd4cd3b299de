"""A tool client keeps its connection to `toolgym serve` across a model turn longer than 5 s.

uvicorn closes an idle connection after 5 s by default, and so did httpx's pool: with a real
model's turns often longer than that, every tool call reconnected. The server here is built by
`toolservers.serve.uvicorn_server`, exactly as `toolgym serve` builds it.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from envs.client import HttpToolClient, RetryPolicy
from envs.replicas import ReplicaSet
from testkit import LiveServer, free_port, start_worker, thread_alive, wait_until
from toolservers.serve import Listener, Transport, uvicorn_server

GAP_S = 6.0  # longer than uvicorn's and httpx's 5 s defaults


def client_port_app() -> Starlette:
    """Answers each tool call with the client's port: the same port, the same connection."""

    async def call(request: Request) -> JSONResponse:
        client = request.client
        return JSONResponse({"output": str(client.port if client else 0)})

    return Starlette(routes=[Route("/{name}", call, methods=["POST"])])


def serve_like_toolgym() -> LiveServer:
    port = free_port()
    server = uvicorn_server(client_port_app(), Listener(Transport.HTTP, "127.0.0.1", port))
    thread = start_worker(lambda: asyncio.run(server.serve()), name=f"keepalive:{port}")
    wait_until(lambda: server.started, what=f"server on {port}", alive=thread_alive(thread))
    return LiveServer(url=f"http://127.0.0.1:{port}", server=server, thread=thread)


@pytest.mark.slow
def test_a_connection_is_reused_across_a_gap_longer_than_five_seconds() -> None:
    live = serve_like_toolgym()

    async def run() -> list[str]:
        client = HttpToolClient(
            live.url, retry=RetryPolicy(attempts=1), replicas=ReplicaSet([live.url])
        )
        try:
            first = await client.call("echo", {}, "c1")
            await asyncio.sleep(GAP_S)
            second = await client.call("echo", {}, "c2")
            return [first.text, second.text]
        finally:
            await client.aclose()

    try:
        first, second = asyncio.run(run())
    finally:
        live.stop()
    assert first == second, "the second call opened a new connection"
