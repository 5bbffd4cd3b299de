"""HTTP adapter: the tool contract over FastAPI.

POST /search | /list | /read   {"arguments": {...}, "call_id": "c1"}
                               -> 200 {"output": "...", "is_error": false, "call_id": "c1"}
POST /<any other name>         -> 404 {"output": "Error: unknown tool ...", "is_error": true, ...}
GET  /tools                    OpenAI function-tool specs
GET  /health                   liveness, no token

Specs and outputs come from `tool_specs` and `run_tool`, the code MCP serves too, so both
transports list the same schemas and give the same text, refusals included.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from toolservers.auth import BearerGuard, TokenSet
from toolservers.limits import BodySizeLimit
from toolservers.tools import TOOL_NAMES, Toolbox, openai_tool_specs, run_tool

log = logging.getLogger("toolgym.http")

OPEN_PATHS = ("/health",)
MAX_BODY_BYTES = 64 * 1024


class ToolRequest(BaseModel, extra="forbid"):
    # null means "no arguments", as it does for MCP's tools/call.
    arguments: dict[str, Any] | None = None
    call_id: str | None = Field(default=None, max_length=200)


class ToolResponse(BaseModel):
    output: str
    # The tool's own verdict, as MCP's `is_error`: clients must not guess it from the text.
    is_error: bool
    call_id: str | None


def create_http_app(toolbox: Toolbox, tokens: TokenSet) -> ASGIApp:
    app = FastAPI(title="toolgym tools", version="1", docs_url=None, redoc_url=None)
    specs = openai_tool_specs(toolbox)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        manifest = toolbox.searcher.index.manifest
        return {"status": "ok", "documents": len(toolbox.corpus), "search": manifest.search}

    @app.get("/tools")
    async def tools() -> list[dict[str, Any]]:
        return specs

    for name in TOOL_NAMES:
        _add_tool_route(app, toolbox, name)
    unknown_tool = _tool_endpoint(toolbox, None)

    @app.exception_handler(StarletteHTTPException)
    async def not_found(request: Request, exc: StarletteHTTPException) -> Response:
        # POST /<name> that matched no route: a model that invents a tool gets the refusal
        # text MCP gives it, under a 404. A handler rather than a catch-all route, so that
        # POST /tools or /health keeps its 405 and /health (open) never reaches a tool.
        if exc.status_code == 404 and request.method == "POST" and _is_tool_path(request):
            return await unknown_tool(request)
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: log it for us, tell the caller nothing about internals.
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"error": "internal", "detail": "internal server error"}, 500)

    guarded = BearerGuard(app, tokens, open_paths=OPEN_PATHS)
    return BodySizeLimit(guarded, MAX_BODY_BYTES)


def _is_tool_path(request: Request) -> bool:
    name = request.scope["path"].removeprefix("/")
    return bool(name) and "/" not in name


def _bad_request(kind: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=400)


def _parse_call(body: bytes) -> ToolRequest | JSONResponse:
    # The body is parsed here rather than by FastAPI so that any Content-Type works (a bare
    # `curl -d` sends form encoding) and so a bad body gets a short error that echoes nothing.
    try:
        return ToolRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        if first["type"] == "json_invalid":
            return _bad_request("invalid_json", f"request body is not valid JSON: {first['msg']}")
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return _bad_request(
            "invalid_request",
            f'{where}: {first["msg"]}. Expected {{"arguments": {{...}}, "call_id": "..."}}.',
        )


Endpoint = Callable[[Request], Awaitable[Response]]


def _tool_endpoint(toolbox: Toolbox, tool: str | None) -> Endpoint:
    """The handler of one tool's route; with `tool=None`, of a POST to an unknown name."""

    async def route(request: Request) -> Response:
        call = _parse_call(await request.body())
        if isinstance(call, JSONResponse):
            return call
        name = tool if tool is not None else request.scope["path"].removeprefix("/")
        result = await run_tool(toolbox, name, call.arguments or {})
        body = ToolResponse(
            output=result.text, is_error=result.is_error, call_id=call.call_id
        ).model_dump_json()
        status = 200 if name in TOOL_NAMES else 404
        return Response(body, status_code=status, media_type="application/json")

    return route


def _add_tool_route(app: FastAPI, toolbox: Toolbox, name: str) -> None:
    schema = {"content": {"application/json": {"schema": ToolRequest.model_json_schema()}}}
    app.add_api_route(
        f"/{name}",
        _tool_endpoint(toolbox, name),
        methods=["POST"],
        name=name,
        response_model=ToolResponse,
        openapi_extra={"requestBody": {**schema, "required": True}},
    )
