"""HTTP adapter: the tool contract over FastAPI.

POST /search | /list | /read   {"arguments": {...}, "call_id": "c1"}
                               -> 200 {"output": "...", "call_id": "c1"}
GET  /tools                    OpenAI function-tool specs
GET  /health                   liveness, no token
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp

from toolservers.auth import BearerGuard, TokenSet
from toolservers.limits import BodySizeLimit
from toolservers.tools import TOOL_NAMES, Toolbox, call_tool, openai_tool_specs

log = logging.getLogger("toolgym.http")

OPEN_PATHS = ("/health",)
MAX_BODY_BYTES = 64 * 1024


class ToolRequest(BaseModel, extra="forbid"):
    arguments: dict[str, Any] = Field(default_factory=dict)
    call_id: str | None = Field(default=None, max_length=200)


class ToolResponse(BaseModel):
    output: str
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

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: log it for us, tell the caller nothing about internals.
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"error": "internal", "detail": "internal server error"}, 500)

    guarded = BearerGuard(app, tokens, open_paths=OPEN_PATHS)
    return BodySizeLimit(guarded, MAX_BODY_BYTES)


def _bad_request(kind: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=400)


def _add_tool_route(app: FastAPI, toolbox: Toolbox, name: str) -> None:
    # The body is parsed here rather than by FastAPI so that any Content-Type works (a bare
    # `curl -d` sends form encoding) and so a bad body gets a short error that echoes nothing.
    async def route(request: Request) -> Response:
        try:
            call = ToolRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            if first["type"] == "json_invalid":
                return _bad_request(
                    "invalid_json", f"request body is not valid JSON: {first['msg']}"
                )
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return _bad_request(
                "invalid_request",
                f'{where}: {first["msg"]}. Expected {{"arguments": {{...}}, "call_id": "..."}}.',
            )
        output = await call_tool(toolbox, name, call.arguments)
        body = ToolResponse(output=output, call_id=call.call_id).model_dump_json()
        return Response(body, media_type="application/json")

    schema = {"content": {"application/json": {"schema": ToolRequest.model_json_schema()}}}
    app.add_api_route(
        f"/{name}",
        route,
        methods=["POST"],
        name=name,
        response_model=ToolResponse,
        openapi_extra={"requestBody": {**schema, "required": True}},
    )
