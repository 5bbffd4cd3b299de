"""`toolgym demo tools`: corpus, offline embedding model, index, then both servers with a token.

Everything is made on this machine (no downloads), so the demo runs offline. The servers
run in this process until Ctrl-C, or only long enough for a self-check with `--check`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import httpx

from toolservers.auth import TokenSet
from toolservers.errors import IndexUnusableError
from toolservers.index import SearchMode, build_index, read_manifest
from toolservers.local_model import build_static_model
from toolservers.serve import Listener, Transport, build_app, uvicorn_server
from toolservers.service import open_toolbox
from toolservers.synth import synthesize_corpus

HOST = "127.0.0.1"


def prepare(workdir: Path, seed: int = 0) -> Path:
    """Corpus, embedding model and index under `workdir`; reuses what is already current."""
    corpus_dir = workdir / "corpus"
    model_dir = workdir / "embedding-model"
    if not (corpus_dir / "facts.jsonl").is_file():
        print(f"[1/3] generating the filings corpus in {corpus_dir}", flush=True)
        synthesize_corpus(corpus_dir, seed=seed)
    if not (model_dir / "modules.json").is_file():
        print(f"[2/3] making an offline embedding model in {model_dir}", flush=True)
        build_static_model(corpus_dir, model_dir)
    try:
        open_toolbox(corpus_dir)
        print("[3/3] search index is current", flush=True)
    except IndexUnusableError:  # missing or stale: rebuild, it takes seconds
        print("[3/3] building the hybrid search index", flush=True)
        build_index(corpus_dir, search=SearchMode.HYBRID, embedding_model=str(model_dir.resolve()))
    return corpus_dir


def _usage(token: str, http_port: int, mcp_port: int) -> str:
    call = json.dumps(
        {
            "arguments": {"query": "Henderson Industries Q3 2025 operating margin", "top_k": 3},
            "call_id": "c1",
        }
    )
    return (
        f"\nTOOL_BEARER={token}\n\n"
        f"HTTP  http://{HOST}:{http_port}   (GET /health, GET /tools, POST /search|/list|/read)\n"
        f"MCP   http://{HOST}:{mcp_port}/mcp  (streamable HTTP, same tools)\n\n"
        f"Try:\n  curl -s http://{HOST}:{http_port}/search -H 'Authorization: Bearer {token}' "
        f"-H 'Content-Type: application/json' -d '{call}'\n"
    )


async def _self_check(token: str, port: int) -> str:
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        response = await client.post(
            "/search",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "arguments": {"query": "Henderson Industries operating margin"},
                "call_id": "demo",
            },
        )
        response.raise_for_status()
        return str(response.json()["output"])


async def _run(corpus_dir: Path, http_port: int, mcp_port: int, check_only: bool) -> None:
    token = secrets.token_urlsafe(24)
    tokens = TokenSet([token])
    toolbox = open_toolbox(corpus_dir)
    servers = [
        uvicorn_server(build_app(toolbox, transport, tokens, HOST), Listener(transport, HOST, port))
        for transport, port in ((Transport.HTTP, http_port), (Transport.MCP, mcp_port))
    ]
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    while not all(server.started for server in servers):
        if any(task.done() for task in tasks):
            raise RuntimeError("a server failed to start (is the port in use?)")
        await asyncio.sleep(0.05)
    manifest = read_manifest(corpus_dir)
    print(f"serving {len(toolbox.corpus)} documents ({manifest.chunks} chunks, {manifest.search})")
    print(_usage(token, http_port, mcp_port))
    print("self-check, search over HTTP:\n" + await _self_check(token, http_port), flush=True)
    if check_only:
        for server in servers:
            server.should_exit = True
    else:
        print("\nservers are up; Ctrl-C stops them", flush=True)
    await asyncio.gather(*tasks)


def run_tools_demo(workdir: Path, http_port: int, mcp_port: int, check_only: bool) -> None:
    corpus_dir = prepare(workdir)
    asyncio.run(_run(corpus_dir, http_port, mcp_port, check_only))
