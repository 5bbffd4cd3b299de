"""Pieces of `toolgym demo run`: the demo's rows, its tool servers, the `--count` option, the
commands it prints, the token it hands its environments."""

from __future__ import annotations

import json
import shlex
import socket
from pathlib import Path

import gymnasium as gym
import httpx
import pytest

from envs.data.build import build_dataset, parse_counts
from envs.data.metrics import METRICS
from envs.data.oracle import recipe_of
from envs.data.rows import DatasetError, load_rows
from envs.registry import register_yaml
from rollout.cli import eval_request as cli_eval_request
from rollout.cli import policy_spec, settings_from
from testkit import TOKENS, LiveServer
from trainer.cli import build_parser
from trainer.demo import (
    CONFIG,
    ENV_ID,
    DemoSettings,
    eval_command,
    eval_request,
    prior_check_command,
    prior_check_inputs,
    train_command,
    train_overrides,
    write_env_file,
)
from trainer.demo_data import DemoData, _select, is_quarterly_statement_lookup, show_command
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


def printed_argv(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The words of the one `$ toolgym ...` line printed since the last read."""
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("$ toolgym ")
    return shlex.split(line.removeprefix("$ toolgym "))


def test_the_commands_the_demo_prints_parse_as_toolgym_commands_of_what_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "a work dir"  # a space: the printed command must quote it
    data = DemoData(*(work / name for name in ("corpus", "all-t", "all-v", "t.jsonl", "v.jsonl")))
    settings = DemoSettings(workdir=work, grpo_overrides=["steps=10"], eval_rows=5)
    policy, adapter = work / "policy", work / "grpo" / "adapters" / "v0003"
    for directory in (policy, adapter):  # policy specs name directories that exist
        directory.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    parser = build_parser()

    overrides = train_overrides(settings, policy, data, work / "grpo")
    show_command(*train_command(overrides))
    args = parser.parse_args(printed_argv(capsys))
    assert (args.command, args.config, args.set) == ("train", CONFIG, overrides)
    assert f"base_model={policy}" in args.set and args.set[-1] == "steps=10"

    show_command(*prior_check_command(settings, policy, data, work / "prior.jsonl"))
    args = parser.parse_args(printed_argv(capsys))
    spec, rollout = prior_check_inputs(settings, policy)
    # what the verb would build from the printed words is what the demo runs
    assert (args.command, args.dataset, args.out) == ("prior-check", data.val, work / "prior.jsonl")
    assert (policy_spec(args), settings_from(args, args.attempts)) == (spec, rollout)
    assert args.rows == settings.prior_rows

    show_command(*eval_command(settings, policy, adapter, data, work / "eval"))
    args = parser.parse_args(printed_argv(capsys))
    assert args.command == "eval"
    assert cli_eval_request(args) == eval_request(settings, policy, adapter, data, work / "eval")

    show_command("index", "build", "--corpus", data.corpus, "--chunk-chars", 300)
    args = parser.parse_args(printed_argv(capsys))
    assert (args.corpus, args.chunk_chars) == (data.corpus, 300)


@pytest.mark.usefixtures("forget_new_envs")
def test_the_demo_env_presents_the_token_it_was_registered_with(
    corpus_dir: Path, http_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No TOOL_BEARER anywhere: the token reaches the in-process environments as an argument,
    while the file written for the user still names TOOL_BEARER for the printed commands."""
    monkeypatch.delenv("TOOL_BEARER", raising=False)
    build_dataset(corpus_dir, tmp_path, seed=0, counts={"lookup": 40})
    rows = tmp_path / "demo.jsonl"
    _select(tmp_path / "train.jsonl", rows)
    env_file = tmp_path / "env.yaml"
    write_env_file(env_file, rows, http_server.url, DemoSettings())
    assert "token_env: TOOL_BEARER" in env_file.read_text()
    assert TOKENS[0] not in env_file.read_text()

    assert register_yaml(env_file, token=TOKENS[0]) == ENV_ID
    env = gym.make(ENV_ID)
    try:
        env.reset(seed=0)
        call = {"name": "list", "arguments": json.dumps({})}
        observation, *_ = env.step(
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c0", "type": "function", "function": call}]}
        )  # fmt: skip
    finally:
        env.close()
    assert "documents under" in str(observation[0]["content"])


@pytest.mark.usefixtures("forget_new_envs")
def test_the_demo_env_wants_the_scale_its_prompt_asks_for(
    corpus_dir: Path, http_server: LiveServer, tmp_path: Path
) -> None:
    """The system prompt asks for 'Answer: $1,234.5 million': the same figure without its
    scale word earns nothing there, though the default grader would read it in millions."""
    build_dataset(corpus_dir, tmp_path, seed=0, counts={"lookup": 40})
    rows = tmp_path / "demo.jsonl"
    _select(tmp_path / "train.jsonl", rows)
    row = next(r for r in load_rows(rows) if str(r.reference_answer).endswith(" million"))
    reference = str(row.reference_answer)
    env_file = tmp_path / "env.yaml"
    write_env_file(env_file, rows, http_server.url, DemoSettings())
    register_yaml(env_file, token=TOKENS[0])
    rewards = {}
    for answer in (reference, reference.removesuffix(" million")):
        env = gym.make(ENV_ID)
        try:
            env.reset(seed=0, options={"row_id": row.id})
            _, reward, terminated, _, info = env.step(
                {"role": "assistant", "content": f"Answer: {answer}"}
            )
        finally:
            env.close()
        assert terminated
        rewards[answer] = (reward, info["grade"]["details"].get("rule"))
    # Half for the right figure: the row wants a tool call and none was made.
    assert list(rewards.values()) == [(0.5, "equal"), (0.0, "unit_missing")], rewards
