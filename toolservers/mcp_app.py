"""MCP adapter: the same three tools on an `MCPServer`, streamable HTTP at /mcp or stdio.

Every tool is listed with MCP annotations saying it only reads (`READ_ONLY`): a client that
must not change anything (a task generator, a cautious agent) can rely on them.

Nothing here describes or checks a tool a second time. `tools/list` shows the `tool_specs`
that `GET /tools` shows, and `tools/call` goes through `run_tool`, the code behind the HTTP
routes: the SDK's own argument validation (and its raw pydantic dump on a bad call) is never
reached, so a refusal is an `is_error` result with the very text HTTP returns.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp

from toolservers.auth import BearerGuard, TokenSet
from toolservers.limits import BodySizeLimit
from toolservers.tools import Toolbox, ToolSpec, run_tool, tool_functions, tool_specs

MCP_PATH = "/mcp"
MAX_BODY_BYTES = 64 * 1024
# search, list and read change nothing, and reach nothing beyond the corpus they serve.
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)


def _listed(spec: ToolSpec, toolbox: Toolbox) -> Tool:
    """A tool as the SDK lists it, with our schema in place of the SDK's derivation (which
    adds titles and omits `additionalProperties: false`). The SDK never runs it:
    `ToolboxServer.call_tool` answers every call. It is registered so that `tools/list` and
    the SDK's own per-tool schema lookups both see the spec HTTP serves."""
    fn = tool_functions(toolbox)[spec.name]
    tool = Tool.from_function(
        fn,
        name=spec.name,
        description=spec.description,
        annotations=READ_ONLY,
        structured_output=False,
    )
    return tool.model_copy(update={"parameters": spec.parameters})


class ToolboxServer(MCPServer[Any]):
    """An MCPServer whose calls are answered by `run_tool`, exactly as the HTTP routes are."""

    def __init__(self, toolbox: Toolbox) -> None:
        super().__init__(
            name="toolgym",
            instructions="Search, list and read a corpus of filings.",
            tools=[_listed(spec, toolbox) for spec in tool_specs(toolbox)],
            log_level="WARNING",
        )
        self.toolbox = toolbox

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult:
        # Unknown names land here too (the SDK's "Unknown tool: x" is never produced).
        result = await run_tool(self.toolbox, name, arguments)
        return CallToolResult(
            content=[TextContent(type="text", text=result.text)], is_error=result.is_error
        )


def create_mcp_server(toolbox: Toolbox) -> MCPServer[Any]:
    server = ToolboxServer(toolbox)

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
