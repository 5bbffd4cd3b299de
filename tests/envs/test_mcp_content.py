"""How an MCP tool result reads to the model: every block rendered, nothing dropped silently,
the server's `is_error` kept as the flag."""

from __future__ import annotations

import base64

import pytest
from mcp_types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from envs.client import ToolOutput
from envs.mcp_content import decoded_size, render_result, size_label


def b64(n_bytes: int) -> str:
    return base64.b64encode(b"\x89" * n_bytes).decode()


def result(*blocks: object, structured: dict[str, object] | None = None) -> CallToolResult:
    return CallToolResult.model_validate(
        {
            "content": [b.model_dump(by_alias=True) for b in blocks],  # type: ignore[attr-defined]
            "structuredContent": structured,
            "isError": False,
        }
    )


@pytest.mark.parametrize(
    ("n", "label"),
    [(0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KB"), (3174, "3.1 KB")],
)
def test_sizes_read_at_a_glance(n: int, label: str) -> None:
    assert size_label(n) == label
    assert size_label(5 * 1024 * 1024) == "5.0 MB"


def test_a_size_is_that_of_the_decoded_bytes() -> None:
    assert decoded_size(b64(3174)) == 3174
    assert decoded_size("not base64 at all!") >= 0  # a malformed blob still gets a label


def test_text_blocks_are_joined_by_newlines() -> None:
    out = render_result(
        result(TextContent(type="text", text="one"), TextContent(type="text", text="two"))
    )
    assert out == ToolOutput("one\ntwo", is_error=False)


def test_binary_blocks_become_placeholders_with_type_and_size() -> None:
    out = render_result(
        result(
            TextContent(type="text", text="Here:"),
            ImageContent(type="image", data=b64(3174), mime_type="image/png"),
            AudioContent(type="audio", data=b64(2048), mime_type="audio/wav"),
        )
    )
    assert out.text == "Here:\n[image image/png, 3.1 KB]\n[audio audio/wav, 2.0 KB]"


def test_resources_show_their_text_or_their_address() -> None:
    out = render_result(
        result(
            ResourceLink(type="resource_link", uri="demo://r/1", name="Resource 1"),
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(uri="demo://r/2", mime_type="text/plain", text="hi"),
            ),
            EmbeddedResource(
                type="resource",
                resource=BlobResourceContents(
                    uri="demo://r/3", mime_type="application/gzip", blob=b64(2048)
                ),
            ),
            EmbeddedResource(
                type="resource", resource=BlobResourceContents(uri="demo://r/4", blob=b64(10))
            ),
        )
    )
    assert out.text.splitlines() == [
        "[resource link: demo://r/1 (Resource 1)]",
        "hi",
        "[resource demo://r/3 application/gzip, 2.0 KB]",
        "[resource demo://r/4, 10 B]",
    ]


def test_structured_content_is_shown_only_when_no_block_had_text() -> None:
    weather = {"temperature": 33, "conditions": "Cloudy"}
    alone = render_result(result(structured=weather))
    assert alone.text == '{"temperature":33,"conditions":"Cloudy"}'
    with_image = render_result(
        result(ImageContent(type="image", data=b64(10), mime_type="image/png"), structured=weather)
    )
    assert with_image.text == '[image image/png, 10 B]\n{"temperature":33,"conditions":"Cloudy"}'
    said = TextContent(type="text", text="33, cloudy")
    repeated = render_result(result(said, structured=weather))
    assert repeated.text == "33, cloudy"  # the server said it as text already


def test_the_servers_error_flag_is_kept() -> None:
    failed = CallToolResult(content=[TextContent(type="text", text="no such city")], is_error=True)
    assert render_result(failed) == ToolOutput("no such city", is_error=True)
    assert render_result(CallToolResult(content=[])) == ToolOutput("", is_error=False)
