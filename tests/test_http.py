"""The HTTP transport on a real uvicorn server: auth, the tool contract, bad input, paging."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit import TOKENS, LiveServer, auth
from toolservers.corpus import Corpus
from toolservers.synth import load_facts
from toolservers.tools import DEFAULT_READ_BUDGET

TOOL_ROUTES = ("/search", "/list", "/read")
GOOD_ARGS = {
    "/search": {"query": "Henderson Industries operating margin"},
    "/list": {"prefix": "filings/henderson"},
    "/read": {"path": "filings/henderson-industries-10q-2025-q3.html"},
}


@pytest.fixture(scope="module")
def client(http_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=http_server.url, timeout=30) as c:
        yield c


def call(client: httpx.Client, route: str, arguments: object, token: str = TOKENS[0]) -> str:
    response = client.post(
        route, json={"arguments": arguments, "call_id": "t1"}, headers=auth(token)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["call_id"] == "t1"
    return str(body["output"])


# ---- who gets in ----


@pytest.mark.parametrize("route", [*TOOL_ROUTES, "/tools"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKENS[0]}x"},
        {"Authorization": f"Basic {TOKENS[0]}"},
        {"Authorization": TOKENS[0]},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "prefix-of-longer", "basic-scheme", "no-scheme", "empty"],
)
def test_tool_routes_refuse_missing_or_wrong_tokens(
    client: httpx.Client, route: str, headers: dict[str, str]
) -> None:
    if route == "/tools":
        response = client.get(route, headers=headers)
    else:
        response = client.post(route, json={"arguments": GOOD_ARGS[route]}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert TOKENS[0] not in response.text


@pytest.mark.parametrize("token", TOKENS, ids=["current", "previous"])
def test_every_configured_token_is_accepted(client: httpx.Client, token: str) -> None:
    assert call(client, "/list", {"prefix": "filings/"}, token=token).startswith("352 documents")


def test_scheme_is_case_insensitive(client: httpx.Client) -> None:
    response = client.get("/tools", headers={"Authorization": f"bearer {TOKENS[1]}"})
    assert response.status_code == 200


def test_health_needs_no_token(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["documents"] == 352


# ---- the contract ----


def test_tutorial_search_call_returns_ranked_hits(client: httpx.Client, corpus_dir: Path) -> None:
    output = call(
        client, "/search", {"query": "Henderson Industries Q3 2025 operating margin", "top_k": 3}
    )
    lines = output.splitlines()
    assert len(lines) == 6  # three hits, each a header line and a snippet line
    assert lines[0].startswith("filings/henderson-industries-10q-2025-q3.html (score ")
    assert lines[1].startswith("  ")
    scores = [float(line.split("(score ")[1].rstrip(")")) for line in lines[::2]]
    assert scores == sorted(scores, reverse=True)


def test_call_id_is_echoed_and_optional(client: httpx.Client) -> None:
    response = client.post("/list", json={"arguments": {}}, headers=auth())
    assert response.status_code == 200
    assert response.json()["call_id"] is None


def test_tools_lists_openai_function_specs(client: httpx.Client) -> None:
    specs = client.get("/tools", headers=auth()).json()
    assert [s["function"]["name"] for s in specs] == ["search", "list", "read"]
    for spec in specs:
        assert spec["type"] == "function"
        assert spec["function"]["description"]
        assert spec["function"]["parameters"]["type"] == "object"
    read = specs[2]["function"]["parameters"]
    assert read["required"] == ["path"]
    assert read["properties"]["offset"]["minimum"] == 0
    for spec in specs:
        parameters = spec["function"]["parameters"]
        # The schema says what the server enforces: unknown arguments are refused.
        assert parameters["additionalProperties"] is False
        assert next(iter(parameters)) == "type"  # MCP's wire order, so the two match bytewise
        assert "title" not in json.dumps(parameters)


def test_unknown_tool_gets_a_404_carrying_the_refusal_text(client: httpx.Client) -> None:
    response = client.post(
        "/delete_everything", json={"arguments": {"path": "x"}, "call_id": "u1"}, headers=auth()
    )
    assert response.status_code == 404
    assert response.json() == {
        "output": "Error: unknown tool 'delete_everything'. Tools: search, list, read.",
        "is_error": True,
        "call_id": "u1",
    }


@pytest.mark.parametrize(
    ("arguments", "is_error"),
    [({"query": "Henderson operating margin"}, False), ({"query": ""}, True)],
    ids=["good", "bad"],
)
def test_the_body_carries_the_tools_own_error_flag(
    client: httpx.Client, arguments: dict[str, object], is_error: bool
) -> None:
    response = client.post("/search", json={"arguments": arguments}, headers=auth())
    assert response.status_code == 200
    body = response.json()
    assert body["is_error"] is is_error
    assert body["output"].startswith("Error: ") is is_error


def test_unknown_tool_names_are_behind_the_token(client: httpx.Client) -> None:
    response = client.post("/delete_everything", json={"arguments": {}})
    assert response.status_code == 401
    assert "search" not in response.text


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [("/tools", auth(), 405), ("/health", {}, 405), ("/read/x", auth(), 404)],
)
def test_other_posts_are_not_answered_as_tool_calls(
    client: httpx.Client, path: str, headers: dict[str, str], status: int
) -> None:
    response = client.post(path, json={"arguments": {}}, headers=headers)
    assert response.status_code == status
    assert "output" not in response.json()


def test_null_arguments_mean_no_arguments_as_over_mcp(client: httpx.Client) -> None:
    assert call(client, "/list", None) == call(client, "/list", {})


def test_read_paging_round_trips_a_long_document_exactly(
    client: httpx.Client, corpus_dir: Path
) -> None:
    corpus = Corpus(corpus_dir)
    path = max(corpus.paths, key=lambda p: len(corpus.text(p)))
    full = corpus.text(path)
    assert len(full) > DEFAULT_READ_BUDGET
    parts, offset = [], 0
    for _ in range(len(full) // DEFAULT_READ_BUDGET + 2):  # bounded: a stuck offset must fail
        output = call(client, "/read", {"path": path, "offset": offset})
        marker = f"\n[Showing characters {offset}-"
        if marker not in output:
            parts.append(output)
            break
        body, note = output.rsplit(marker, 1)
        assert 0 < len(body) <= DEFAULT_READ_BUDGET
        next_offset = int(note.split("offset=")[1].rstrip(").]"))
        assert next_offset == offset + len(body)
        parts.append(body)
        offset = next_offset
    else:
        pytest.fail(f"paging {path} did not end after {len(parts)} pages")
    assert len(parts) >= 2
    assert "".join(parts) == full


def test_list_pages_cover_every_path_once(client: httpx.Client, corpus_dir: Path) -> None:
    seen: list[str] = []
    page = 1
    while page <= 10:  # 4 pages expected; a "[More:" on every page must fail, not loop
        output = call(client, "/list", {"prefix": "filings/", "page": page})
        lines = output.splitlines()
        seen.extend(line for line in lines if line.startswith("filings/"))
        if "[More:" not in output:
            break
        page += 1
        assert len(output) < DEFAULT_READ_BUDGET
    assert page == 4
    assert seen == Corpus(corpus_dir).paths


def test_read_shows_the_stated_figure(client: httpx.Client, corpus_dir: Path) -> None:
    fact = next(f for f in load_facts(corpus_dir / "facts.jsonl") if f.metric == "operating_margin")
    output = call(client, "/read", {"path": fact.path})
    assert fact.display in output


# ---- bad input: 200 with "Error: ..." and never a byte from outside the corpus ----

BAD_ARGUMENTS = [
    ("/search", {}, "query"),
    ("/search", {"query": ""}, "query is empty"),
    ("/search", {"query": "   "}, "query is empty"),
    ("/search", {"query": 42}, "query"),
    ("/search", {"query": "x", "top_k": 0}, "top_k"),
    ("/search", {"query": "x", "top_k": -5}, "top_k"),
    ("/search", {"query": "x", "top_k": 10**12}, "top_k"),
    ("/search", {"query": "x", "top_k": "5"}, "top_k"),
    ("/search", {"query": "x", "top_k": True}, "top_k"),
    ("/search", {"query": "x" * 5000}, "longer than"),
    ("/search", {"query": "x", "colour": "red"}, "colour"),
    ("/list", {"prefix": 7}, "prefix"),
    ("/list", {"page": 0}, "page"),
    ("/list", {"prefix": "filings/", "page": 999}, "past the last page"),
    ("/read", {}, "path"),
    ("/read", {"path": "/etc/passwd"}, "absolute"),
    ("/read", {"path": "C:\\Windows\\win.ini"}, "absolute"),
    ("/read", {"path": "../../etc/passwd"}, "'..'"),
    ("/read", {"path": "filings/../../../etc/passwd"}, "'..'"),
    ("/read", {"path": "filings/x\x00.html"}, "NUL"),
    ("/read", {"path": "filings/no-such-company-10k-2025.html"}, "no document"),
    ("/read", {"path": "facts.jsonl"}, "no document"),
    ("/read", {"path": "index/manifest.json"}, "no document"),
    ("/read", {"path": ""}, "empty"),
    ("/read", {"path": "filings/henderson-industries-10k-2025.html", "offset": -1}, "offset"),
    (
        "/read",
        {"path": "filings/henderson-industries-10k-2025.html", "offset": 10**9},
        "past the end",
    ),
    ("/read", {"path": "filings/henderson-industries-10k-2025.html", "offset": 1.5}, "offset"),
]


@pytest.mark.parametrize(("route", "arguments", "mentions"), BAD_ARGUMENTS)
def test_bad_arguments_get_a_readable_error(
    client: httpx.Client, route: str, arguments: dict[str, object], mentions: str
) -> None:
    output = call(client, route, arguments)
    assert output.startswith("Error: ")
    assert mentions in output
    assert "Traceback" not in output
    assert "root:" not in output  # nothing of /etc/passwd


def test_symlink_out_of_the_corpus_is_never_followed(tmp_path: Path, small_corpus: Path) -> None:
    from toolservers.errors import ToolInputError

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    os.symlink(secret, small_corpus / "filings" / "leak.txt")
    os.symlink(tmp_path, small_corpus / "filings" / "outside")
    corpus = Corpus(small_corpus)
    assert not any("leak" in p or "outside" in p for p in corpus.paths)
    for path in ("filings/leak.txt", "filings/outside/secret.txt"):
        with pytest.raises(ToolInputError):
            corpus.resolve(path)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[]", 400, "invalid_request"),
        (b'{"arguments": [1, 2]}', 400, "invalid_request"),
        (b'{"arguments": {}, "call_id": 5}', 400, "invalid_request"),
        (b'{"arguments": {}, "extra": 1}', 400, "invalid_request"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b'{"arguments": {"query": "' + b"a" * 100_000 + b'"}}', 413, "body_too_large"),
    ],
)
def test_malformed_bodies_get_a_json_4xx(
    client: httpx.Client, body: bytes, status: int, error: str
) -> None:
    response = client.post("/search", content=body, headers=auth())
    assert response.status_code == status
    assert response.json()["error"] == error


def test_plain_curl_form_content_type_still_works(client: httpx.Client) -> None:
    headers = {**auth(), "Content-Type": "application/x-www-form-urlencoded"}
    response = client.post(
        "/list", content=b'{"arguments": {"prefix": "filings/apex"}}', headers=headers
    )
    assert response.status_code == 200
    assert "filings/apex-materials-10k-2024.html" in response.json()["output"]
