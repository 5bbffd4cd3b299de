"""Pieces of `toolgym demo run`: the demo's rows, its tool servers, the `--count` option."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from envs.data.build import build_dataset, parse_counts
from envs.data.metrics import METRICS
from envs.data.oracle import recipe_of
from envs.data.rows import DatasetError, load_rows
from trainer.demo_data import _select, is_quarterly_statement_lookup
from trainer.demo_servers import ToolServers
from trainer.errors import TrainerError


def test_count_items_parse_and_refuse_unknown_tasks() -> None:
    assert parse_counts([]) is None
    assert parse_counts(["lookup=12", "ratio=0"]) == {"lookup": 12, "ratio": 0}
    with pytest.raises(DatasetError, match="TASK=N"):
        parse_counts(["lookups=3"])
    with pytest.raises(DatasetError, match="TASK=N"):
        parse_counts(["lookup=many"])


def test_demo_rows_are_quarterly_statement_lookups_answered_by_search(
    corpus_dir: Path, tmp_path: Path
) -> None:
    build_dataset(corpus_dir, tmp_path, seed=0)
    rows = load_rows(tmp_path / "train.jsonl")
    kept = _select(tmp_path / "train.jsonl", tmp_path / "demo.jsonl")
    selected = load_rows(tmp_path / "demo.jsonl")
    assert 0 < kept == len(selected) < len(rows)
    assert {r.id for r in selected} == {r.id for r in rows if is_quarterly_statement_lookup(r)}
    for row in selected:
        (fact,) = recipe_of(row).facts
        assert "-Q" in fact.period and METRICS[fact.metric].kind == "flow"
        assert row.expected.must_use_tools == ["search"]


def test_servers_answer_with_the_token_and_stop(
    corpus_dir: Path, hybrid_index: Path, tmp_path: Path
) -> None:
    with ToolServers(corpus_dir, "demo-token-123456", tmp_path / "logs") as servers:
        auth = {"Authorization": "Bearer demo-token-123456"}
        assert httpx.get(f"{servers.http_url}/tools", headers=auth).status_code == 200
        assert httpx.get(f"{servers.http_url}/tools").status_code == 401
        assert httpx.post(servers.mcp_url, json={}).status_code == 401
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{servers.http_url}/health", timeout=2)


def test_a_server_that_cannot_start_fails_with_its_log(
    corpus_dir: Path, hybrid_index: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        servers = ToolServers(corpus_dir, "demo-token-123456", tmp_path / "logs", http_port=port)
        with pytest.raises(TrainerError, match="exited while starting"):
            servers.__enter__()
