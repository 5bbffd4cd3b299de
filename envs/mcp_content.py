"""An MCP tool result as the text a model reads.

A tool's answer is a list of content blocks (text, image, audio, resource link, embedded
resource) plus, optionally, structured content. The model sees one text, so every block is
rendered to a line of it: text as it is, binary blocks as a short placeholder with their type
and size (the bytes themselves would be noise to a text model, and silently dropping them would
hide that the tool answered at all). Structured content is shown only when no block carried any
text: servers usually repeat it as text, and showing it twice would cost tokens for nothing.

The server's own `is_error` is kept as the call's failure flag; nothing here reads the text to
guess it.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from mcp_types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ReadResourceResult,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from envs.client import ToolOutput


def size_label(n_bytes: int) -> str:
    """A byte count people read at a glance: "512 B", "3.1 KB", "2.4 MB" (1 KB = 1024 B)."""
    if n_bytes < 1024:
        return f"{n_bytes} B"
    if n_bytes < 1024 * 1024:
        return f"{n_bytes / 1024:.1f} KB"
    return f"{n_bytes / (1024 * 1024):.1f} MB"


def decoded_size(data: str) -> int:
    """The size of base64 `data` once decoded; an estimate when it is not valid base64 (a
    placeholder must not fail because a third party's server sent a malformed blob)."""
    try:
        return len(binascii.a2b_base64(data))
    except (binascii.Error, ValueError):
        return len(data) * 3 // 4


def render_block(block: Any) -> tuple[str, bool]:
    """One content block as text, and whether it carried text of its own (not a placeholder)."""
    if isinstance(block, TextContent):
        return block.text, True
    if isinstance(block, ImageContent | AudioContent):
        return f"[{block.type} {block.mime_type}, {size_label(decoded_size(block.data))}]", False
    if isinstance(block, ResourceLink):
        return f"[resource link: {block.uri} ({block.name})]", False
    if isinstance(block, EmbeddedResource):
        return _render_resource(block.resource)
    kind = getattr(block, "type", type(block).__name__)  # a block type newer than this code
    return f"[{kind} content]", False


def _render_resource(resource: TextResourceContents | BlobResourceContents) -> tuple[str, bool]:
    if isinstance(resource, TextResourceContents):
        return resource.text, True
    mime = f" {resource.mime_type}" if resource.mime_type else ""
    return f"[resource {resource.uri}{mime}, {size_label(decoded_size(resource.blob))}]", False


def render_text(result: CallToolResult) -> str:
    """Every block, one per line; the structured content as compact JSON when no block had
    text (so a tool that answers only with structured content is not read as empty)."""
    rendered = [render_block(block) for block in result.content]
    lines = [text for text, _ in rendered]
    if result.structured_content is not None and not any(has_text for _, has_text in rendered):
        lines.append(json.dumps(result.structured_content, separators=(",", ":")))
    return "\n".join(lines)


def render_result(result: CallToolResult) -> ToolOutput:
    return ToolOutput(render_text(result), bool(result.is_error))


def render_resource(result: ReadResourceResult) -> str:
    """A read resource as text: its text parts, one per line; blobs as placeholders."""
    return "\n".join(_render_resource(part)[0] for part in result.contents)
