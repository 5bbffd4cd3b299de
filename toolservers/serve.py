"""Run the tool servers: HTTP (FastAPI), MCP over streamable HTTP, or MCP over stdio."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from enum import StrEnum

import uvicorn
from starlette.types import ASGIApp

from toolservers.auth import TOKEN_ENV, TokenSet, tokens_from_env
from toolservers.http_app import create_http_app
from toolservers.mcp_app import create_mcp_app, create_mcp_server
from toolservers.tools import Toolbox

LOOPBACK = "127.0.0.1"
# How long an idle keep-alive connection stays open (uvicorn's default is 5 s). A tool client
# calls once per model turn, and turns of a real model often take longer than 5 s, so with the
# default every call would reconnect; clients let go of theirs first (envs.client: 60 s).
KEEP_ALIVE_S = 75
# docker/.env.example ships this placeholder; a server must never accept it.
PLACEHOLDER_PREFIX = "replace-me"


class Transport(StrEnum):
    HTTP = "http"
    MCP = "mcp"
    STDIO = "stdio"


class StartupRefusedError(RuntimeError):
    """The server must not start as asked (no token, insecure mode on a public address)."""


@dataclass(frozen=True)
class Listener:
    transport: Transport
    host: str
    port: int


def resolve_tokens(insecure: bool, host: str) -> tuple[TokenSet, str]:
    """Tokens from TOOL_BEARER, or the insecure loopback-only mode; returns the host to bind."""
    tokens = tokens_from_env()
    if any(t.startswith(PLACEHOLDER_PREFIX) for t in tokens):
        raise StartupRefusedError(
            f"{TOKEN_ENV} still holds the placeholder from docker/.env.example; generate a "
            'token with: python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    if tokens:
        return TokenSet(tokens), host
    if not insecure:
        raise StartupRefusedError(
            f"no token configured: set {TOKEN_ENV}=<token>[,<token>...] "
            "(or pass --insecure-no-auth to run unauthenticated on 127.0.0.1 only)"
        )
    if host != LOOPBACK:
        print(
            f"--insecure-no-auth: ignoring --host {host}, binding {LOOPBACK} only", file=sys.stderr
        )
    banner = "!" * 72
    print(
        f"{banner}\nINSECURE: no {TOKEN_ENV} set; anyone on this machine can call the tools.\n"
        f"Listening on {LOOPBACK} only. Do not use this mode in production.\n{banner}",
        file=sys.stderr,
    )
    return TokenSet(()), LOOPBACK


def build_app(toolbox: Toolbox, transport: Transport, tokens: TokenSet, host: str) -> ASGIApp:
    if transport is Transport.HTTP:
        return create_http_app(toolbox, tokens)
    return create_mcp_app(toolbox, tokens, host=host)


def uvicorn_server(app: ASGIApp, listener: Listener, access_log: bool = False) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=listener.host,
        port=listener.port,
        log_level="info" if access_log else "warning",
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    return uvicorn.Server(config)


def stdio_note(toolbox: Toolbox) -> str:
    """What `serve --transport stdio` says on stderr. No host, port or insecure warning: it
    listens on nothing. The pipe belongs to the process that started it, which is the only
    one that can call the tools, so there is no caller to ask a token of."""
    ignored = f"; {TOKEN_ENV} is not used" if tokens_from_env() else ""
    return (
        f"toolgym MCP server on stdio ({len(toolbox.corpus)} documents, "
        f"search={toolbox.searcher.mode}): no network listener, no auth{ignored}"
    )


def serve_stdio(toolbox: Toolbox) -> None:
    # stdout carries JSON-RPC and nothing else; the SDK's stdio transport also points fd 1
    # at stderr while it runs, so a stray print cannot corrupt the stream.
    print(stdio_note(toolbox), file=sys.stderr, flush=True)
    create_mcp_server(toolbox).run("stdio")


def serve(toolbox: Toolbox, listener: Listener, tokens: TokenSet, access_log: bool = False) -> None:
    if listener.transport is Transport.STDIO:
        serve_stdio(toolbox)
        return
    app = build_app(toolbox, listener.transport, tokens, listener.host)
    path = "/mcp" if listener.transport is Transport.MCP else ""
    print(
        f"toolgym {listener.transport} server on http://{listener.host}:{listener.port}{path} "
        f"({len(toolbox.corpus)} documents, search={toolbox.searcher.mode}, "
        f"auth={'bearer' if tokens.enabled else 'OFF'})",
        flush=True,
    )
    asyncio.run(uvicorn_server(app, listener, access_log).serve())
