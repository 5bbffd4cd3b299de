"""Bearer tokens: where they come from, how they are compared, and the ASGI guard.

Tokens come from `TOOL_BEARER`, comma separated, so a new token can be rolled out before the
old one is withdrawn. Comparison is constant time; tokens are never logged or echoed.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "TOOL_BEARER"


class NoTokenConfiguredError(RuntimeError):
    pass


def tokens_from_env(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    raw = (environ if environ is not None else os.environ).get(TOKEN_ENV, "")
    return tuple(t.strip() for t in raw.split(",") if t.strip())


class TokenSet:
    """Accepted tokens. An empty set means the server runs without auth (insecure mode)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def accepts(self, presented: str) -> bool:
        candidate = presented.encode()
        # Compare against every token without stopping early, so timing reveals nothing.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched

    def accepts_header(self, authorization: str | None) -> bool:
        if not self.enabled:
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.accepts(credentials.strip())


_UNAUTHORIZED_BODY = json.dumps(
    {"error": "unauthorized", "detail": "Send 'Authorization: Bearer <token>' (TOOL_BEARER)."}
).encode()


class BearerGuard:
    """Pure-ASGI middleware: 401 for protected paths without a valid token.

    Pure ASGI rather than a Starlette BaseHTTPMiddleware, which would cost a task per request
    on the hot path and break streaming responses of the mounted MCP app.
    """

    def __init__(self, app: ASGIApp, tokens: TokenSet, open_paths: Iterable[str]) -> None:
        self.app = app
        self.tokens = tokens
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        if self.tokens.accepts_header(authorization):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="toolgym"'),
                    (b"content-length", str(len(_UNAUTHORIZED_BODY)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _UNAUTHORIZED_BODY})
