"""MCP adapter: the same three tools on an `MCPServer`, streamable HTTP at /mcp or stdio.

Each tool is registered from the Toolbox method itself, so its name, typed parameters and
docstring are the ones the HTTP specs are built from. A refusal becomes an `is_error` result
whose text is the very `Error: ...` line the HTTP transport returns.
"""

from __future__ import annotations

import functools
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, TextContent
from pydantic import ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp

from toolservers.auth import BearerGuard, TokenSet
from toolservers.errors import ToolInputError
from toolservers.limits import BodySizeLimit
from toolservers.tools import Toolbox, ToolFn, describe, tool_functions

MCP_PATH = "/mcp"
MAX_BODY_BYTES = 64 * 1024


def _as_mcp_tool(fn: ToolFn) -> Any:
    @functools.wraps(fn)
    async def tool(**arguments: Any) -> CallToolResult:
        try:
            output = await fn(**arguments)
        except ToolInputError as exc:
            return CallToolResult(
                content=[TextContent(type="text", text=f"Error: {exc}")], is_error=True
            )
        return CallToolResult(content=[TextContent(type="text", text=output)])

    # MCP reads the parameters from the signature; the return type is ours to declare.
    tool.__annotations__ = {**fn.__annotations__, "return": CallToolResult}
    return tool


def _strict(tool: Tool) -> Tool:
    """Refuse unknown arguments and silent coercions, exactly as the HTTP adapter does."""
    lax = tool.fn_metadata.arg_model
    strict = type(lax.__name__, (lax,), {"model_config": ConfigDict(extra="forbid", strict=True)})
    tool.fn_metadata.arg_model = strict
    return tool


def create_mcp_server(toolbox: Toolbox) -> MCPServer:
    tools = [
        _strict(
            Tool.from_function(
                _as_mcp_tool(fn), name=name, description=describe(fn), structured_output=False
            )
        )
        for name, fn in tool_functions(toolbox).items()
    ]
    server = MCPServer(
        name="toolgym",
        instructions="Search, list and read a corpus of filings.",
        tools=tools,
        log_level="WARNING",
    )

    @server.custom_route("/health", methods=["GET"])
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "documents": len(toolbox.corpus), "transport": "mcp"})

    return server


def create_mcp_app(toolbox: Toolbox, tokens: TokenSet, host: str = "127.0.0.1") -> ASGIApp:
    """Streamable-HTTP app (stateless, JSON responses: cheap for many parallel rollouts)."""
    server = create_mcp_server(toolbox)
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, stateless_http=True, json_response=True, host=host
    )
    return BodySizeLimit(BearerGuard(app, tokens, open_paths=("/health",)), MAX_BODY_BYTES)
