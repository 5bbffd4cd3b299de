"""The rollout engine end to end: the fake vLLM server, a real tool server over HTTP, real files."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _servers import FakeServer
from _servers import fake_vllm as serve_fake

from envs.data.build import build_dataset
from envs.data.rows import Row, load_rows
from rollout.engine import RolloutResult, RolloutSettings, run_rollouts
from rollout.environments import EnvPool
from rollout.errors import RolloutAbortedError
from rollout.fake_vllm import DEFAULT_MODEL as MODEL
from rollout.fake_vllm import encode, render_prompt
from rollout.openai_policy import OpenAIPolicy
from rollout.policy import Policy, SamplingParams
from rollout.store import read_trajectories
from testkit import (
    TOKENS,
    LiveServer,
    process_alive,
    start_server,
    task_alive,
    wait_until,
    wait_until_async,
)
from toolservers.auth import TokenSet
from toolservers.http_app import create_http_app
from toolservers.mcp_app import create_mcp_app
from toolservers.tools import Toolbox

ROOT = Path(__file__).resolve().parents[2]


def lines_in(path: Path) -> int:
    """Complete lines (finished trajectories) in a JSONL the engine is appending to."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def rows(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Row]:
    out = tmp_path_factory.mktemp("rollout-data")
    build_dataset(corpus_dir, out, seed=0)
    return list(load_rows(out / "val.jsonl"))


@pytest.fixture
def fake_vllm() -> Iterator[FakeServer]:
    with serve_fake() as server:
        yield server


def rollout(
    rows: list[Row],
    tools_url: str,
    policy: Policy,
    out: Path,
    **settings: Any,
) -> RolloutResult:
    async def go() -> RolloutResult:
        pool = EnvPool("toolgym/FilingsQA-v0", dataset=rows, tools_url=tools_url, token=TOKENS[0])
        try:
            return await run_rollouts(
                pool.rows,
                pool.factory(),
                policy,
                RolloutSettings(progress=False, **settings),
                out,
            )
        finally:
            await policy.aclose()
            await pool.aclose()

    return asyncio.run(go())


def test_groups_are_recorded_token_exact(
    rows: list[Row], http_server: LiveServer, fake_vllm: FakeServer, tmp_path: Path
) -> None:
    out = tmp_path / "t.jsonl"
    policy = OpenAIPolicy(fake_vllm.url, MODEL, timeout_s=10)
    result = rollout(rows[:5], http_server.url, policy, out, group_size=3, concurrency=4)
    summary = result.summary
    trajectories = read_trajectories(out).trajectories
    assert len(trajectories) == 15 == summary.episodes == summary.scored
    # What was returned is what was written, in row order then sample order.
    assert sorted(trajectories, key=lambda t: t.key) == sorted(
        result.trajectories, key=lambda t: t.key
    )
    assert [t.key for t in result.trajectories] == [(r.id, i) for r in rows[:5] for i in range(3)]
    assert [g.group_id for g in result.groups()] == [r.id for r in rows[:5]]
    assert {t.group_id for t in trajectories} == {r.id for r in rows[:5]}
    assert summary.token_mismatches == 0
    tools = _tool_specs(http_server)
    for trajectory in trajectories:
        assert trajectory.reward is not None and trajectory.error is None
        assert trajectory.metrics.tool_calls == 2  # the fake agent searches, then reads
        # Both answered without the error flag, and the file says which tools were used.
        assert trajectory.metrics.tool_errors == 0
        assert trajectory.tools_used == ["read", "search"]
        assert len(trajectory.turns) == 3
        # Each turn's prompt ids are the server's rendering of exactly the messages sent.
        assistant_at = [i for i, m in enumerate(trajectory.messages) if m["role"] == "assistant"]
        for turn, index in zip(trajectory.turns, assistant_at, strict=True):
            assert turn.prompt_ids == encode(render_prompt(trajectory.messages[:index], tools))
            assert len(turn.logprobs) == len(turn.completion_ids)
        (segment,) = trajectory.segments()
        generated = [i for i, m in zip(segment.ids, segment.mask, strict=True) if m]
        assert generated == [i for t in trajectory.turns for i in t.completion_ids]
        assert segment.ids[: len(segment.ids)] == trajectory.turns[-1].prompt_ids + list(
            trajectory.turns[-1].completion_ids
        )
    seeds = {t.seed for t in trajectories}
    assert len(seeds) == 15  # every episode has its own sampling seed


def _tool_specs(server: LiveServer) -> Any:
    import httpx

    response = httpx.get(f"{server.url}/tools", headers={"Authorization": f"Bearer {TOKENS[0]}"})
    return response.json()


def test_503s_and_a_hung_request_are_retried(
    rows: list[Row], http_server: LiveServer, fake_vllm: FakeServer, tmp_path: Path
) -> None:
    fake_vllm.faults.fail_next(2, status=503)
    fake_vllm.faults.hang_next(1)
    policy = OpenAIPolicy(fake_vllm.url, MODEL, timeout_s=1.0, backoff_s=0.01)
    summary = rollout(rows[:2], http_server.url, policy, tmp_path / "t.jsonl", group_size=2).summary
    assert summary.failed == 0 and summary.scored == 4
    assert fake_vllm.faults.received == fake_vllm.faults.served + 3


def test_a_resumed_run_returns_what_the_file_had_once_plus_what_it_played(
    rows: list[Row], http_server: LiveServer, fake_vllm: FakeServer, tmp_path: Path
) -> None:
    out = tmp_path / "t.jsonl"
    policy = OpenAIPolicy(fake_vllm.url, MODEL, timeout_s=10)
    first = rollout(rows[:2], http_server.url, policy, out, group_size=2)
    served = fake_vllm.faults.served
    policy = OpenAIPolicy(fake_vllm.url, MODEL, timeout_s=10)
    # Row 3 is new; rows 1 and 2 are in the file. Row 0 is not asked for this time.
    second = rollout(rows[1:3], http_server.url, policy, out, group_size=2)
    assert [t.key for t in second.trajectories] == [(r.id, i) for r in rows[1:3] for i in range(2)]
    assert second.trajectories[:2] == first.trajectories[2:]  # read back, not played again
    assert second.summary.episodes == 4 and second.summary.episodes_this_run == 2
    assert fake_vllm.faults.served - served == 2 * 3  # two new episodes of three turns
    assert len(read_trajectories(out).trajectories) == 6


def test_a_slow_server_times_out_cleanly_as_recorded_policy_errors(
    rows: list[Row], http_server: LiveServer, fake_vllm: FakeServer, tmp_path: Path
) -> None:
    fake_vllm.faults.delay_s = 30.0
    policy = OpenAIPolicy(fake_vllm.url, MODEL, timeout_s=0.3, attempts=2, backoff_s=0.0)
    started = time.monotonic()
    summary = rollout(
        rows[:2], http_server.url, policy, tmp_path / "t.jsonl", group_size=2, max_failures=10
    ).summary
    assert time.monotonic() - started < 10
    assert summary.errors == {"policy": 4}
    for trajectory in read_trajectories(tmp_path / "t.jsonl").trajectories:
        assert trajectory.reward is None
        assert trajectory.error is not None and "PolicyTimeoutError" in trajectory.error.message


def test_an_episode_past_its_deadline_is_recorded_as_a_timeout(
    rows: list[Row], http_server: LiveServer, fake_vllm: FakeServer, tmp_path: Path
) -> None:
    fake_vllm.faults.delay_s = 0.3
    policy = OpenAIPolicy(fake_vllm.url, MODEL, timeout_s=5)
    summary = rollout(
        rows[:1], http_server.url, policy, tmp_path / "t.jsonl", group_size=2,
        episode_timeout_s=0.5, max_failures=2,
    ).summary  # fmt: skip
    assert summary.errors == {"timeout": 2}
    (first, _) = read_trajectories(tmp_path / "t.jsonl").trajectories
    assert first.turns  # what happened before the deadline is kept


def test_too_many_failures_abort_the_run_keeping_what_was_written(
    rows: list[Row], http_server: LiveServer, fake_vllm: FakeServer, tmp_path: Path
) -> None:
    fake_vllm.faults.dead = True
    policy = OpenAIPolicy(fake_vllm.url, MODEL, timeout_s=1, attempts=1)
    with pytest.raises(RolloutAbortedError, match="rerun to resume"):
        rollout(rows[:10], http_server.url, policy, tmp_path / "t.jsonl", max_failures=3)
    assert len(read_trajectories(tmp_path / "t.jsonl").trajectories) >= 4


@pytest.mark.parametrize("transport", ["http", "mcp"])
def test_tool_server_killed_mid_run(
    rows: list[Row], toolbox: Toolbox, fake_vllm: FakeServer, tmp_path: Path, transport: str
) -> None:
    # Over MCP a reset opens (or checks) a session, so the dead server is met at reset too:
    # those episodes are recorded as tool failures like the rest, the run goes on.
    make_app = create_http_app if transport == "http" else create_mcp_app
    tools = start_server(make_app(toolbox, TokenSet(TOKENS)))
    fake_vllm.faults.delay_s = 0.05
    out = tmp_path / "t.jsonl"

    async def go() -> RolloutResult:
        pool = EnvPool(
            "toolgym/FilingsQA-v0",
            dataset=rows,
            tools_url=tools.url,
            token=TOKENS[0],
            transport=transport,
        )
        policy = OpenAIPolicy(fake_vllm.url, MODEL, timeout_s=5)
        settings = RolloutSettings(progress=False, group_size=4, concurrency=4, max_failures=100)
        run = asyncio.create_task(run_rollouts(rows[:6], pool.factory(), policy, settings, out))
        try:
            # Awaited here, not in a side task: a run that dies fails this wait with its error.
            await wait_until_async(
                lambda: lines_in(out) >= 6,
                what="6 trajectories written before the kill",
                alive=task_alive(run, name="run_rollouts"),
                timeout_s=120,
            )
            await asyncio.to_thread(tools.stop)
            return await run
        finally:
            run.cancel()
            await policy.aclose()
            await pool.aclose()

    summary = asyncio.run(go()).summary
    assert summary.episodes == 24
    assert summary.scored >= 6
    assert summary.errors.get("tool", 0) >= 1
    assert set(summary.errors) == {"tool"}
    failed = [t for t in read_trajectories(out).trajectories if t.failed]
    where = tools.url.split("//")[1].rstrip("/")  # host:port, named by either transport
    assert all(t.reward is None and where in t.error.message for t in failed if t.error)


def _cli(out: Path, tools_url: str, policy_url: str, rows_file: Path) -> list[str]:
    return [
        sys.executable, "-m", "trainer.cli", "rollout",
        "--env", "toolgym/FilingsQA-v0", "--dataset", str(rows_file),
        "--tools-url", tools_url, "--base-url", policy_url, "--model", MODEL,
        "--group-size", "4", "--concurrency", "4", "--out", str(out), "--no-progress",
    ]  # fmt: skip


def test_kill_the_rollout_process_and_resume_without_loss(
    rows: list[Row], http_server: LiveServer, fake_vllm: FakeServer, tmp_path: Path
) -> None:
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(r.model_dump_json() + "\n" for r in rows[:8]))
    out = tmp_path / "t.jsonl"
    fake_vllm.faults.delay_s = 0.05
    command = _cli(out, http_server.url, fake_vllm.url, rows_file)
    env = {**os.environ, "TOOL_BEARER": TOKENS[0]}
    log = tmp_path / "rollout.log"
    with log.open("w") as sink:  # a file, not a pipe nobody reads (a full pipe blocks the child)
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=sink)
    try:
        wait_until(
            lambda: lines_in(out) >= 5,
            what="5 trajectories written before the kill",
            alive=process_alive(process, name="toolgym rollout", log=log),
            timeout_s=120,
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    before = out.read_bytes()
    written = before.count(b"\n")
    assert 5 <= written < 32, "the run must be cut part-way"

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = out.read_bytes()
    kept = before[: before.rfind(b"\n") + 1]
    assert after.startswith(kept)  # nothing already written was lost or rewritten
    trajectories = read_trajectories(out).trajectories
    assert len(trajectories) == 32 == after.count(b"\n")  # each episode exactly once
    assert "episodes        32 (32 scored, 0 failed)" in done.stdout
    assert f"throughput      {0:.2f}" not in done.stdout
    served_again = fake_vllm.faults.served
    assert served_again > 0


def test_prior_check_cli_prints_what_run_prior_check_returns(
    rows: list[Row],
    http_server: LiveServer,
    fake_vllm: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rollout import prior_check
    from rollout.store import read_groups
    from trainer.cli import main

    runs: list[prior_check.PriorCheckRun] = []
    real = prior_check.run_prior_check

    async def recorded(*args: Any, **kwargs: Any) -> prior_check.PriorCheckRun:
        runs.append(await real(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(prior_check, "run_prior_check", recorded)
    monkeypatch.setenv("TOOL_BEARER", TOKENS[0])
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(r.model_dump_json() + "\n" for r in rows[:12]))
    code = main(
        ["prior-check", "--dataset", str(rows_file), "--tools-url", http_server.url,
         "--base-url", fake_vllm.url, "--model", MODEL, "--rows", "6",
         "--attempts", "2", "--no-progress", "--out", str(tmp_path / "p.jsonl")]
    )  # fmt: skip
    (run,) = runs
    assert capsys.readouterr().out == run.report() + "\n"
    assert code == (0 if run.result.learnable else 1)
    assert run.result.rows == 6 and run.summary.episodes == 12
    # Judged from the returned trajectories; the kept file says the same.
    kept = prior_check.prior_check(read_groups(tmp_path / "p.jsonl"))
    assert run.result.model_dump(exclude={"outcomes"}) == kept.model_dump(exclude={"outcomes"})
    by_row = sorted(kept.outcomes, key=lambda o: o.row_id)  # the file is in finishing order
    assert sorted(run.result.outcomes, key=lambda o: o.row_id) == by_row


def test_sampling_settings_reach_the_server(
    rows: list[Row], http_server: LiveServer, fake_vllm: FakeServer, tmp_path: Path
) -> None:
    policy = OpenAIPolicy(fake_vllm.url, MODEL, timeout_s=5)
    sampling = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=300)
    rollout(rows[:1], http_server.url, policy, tmp_path / "t.jsonl", group_size=1,
            sampling=sampling)  # fmt: skip
    request = fake_vllm.fake.history[-1]
    assert (request.temperature, request.top_p, request.max_tokens) == (0.7, 0.9, 300)
    assert request.logprobs and request.return_token_ids


def test_the_local_policy_plays_real_episodes_end_to_end(
    rows: list[Row], http_server: LiveServer, tiny_policy_dir: Path, tmp_path: Path
) -> None:
    from rollout.local_policy import LocalPolicy

    policy = LocalPolicy.from_pretrained(tiny_policy_dir, max_batch=8)
    sampling = SamplingParams(temperature=1.0, max_tokens=16)
    summary = rollout(rows[:2], http_server.url, policy, tmp_path / "t.jsonl", group_size=3,
                      concurrency=6, sampling=sampling).summary  # fmt: skip
    assert summary.episodes == 6 and summary.failed == 0
    assert policy.generate_calls < sum(summary.turns_mean for _ in range(6))  # batched
    for trajectory in read_trajectories(tmp_path / "t.jsonl").trajectories:
        first = trajectory.turns[0]
        assert first.prompt_ids == policy.tokenizer.apply_chat_template(
            trajectory.messages[:2],
            tools=_tool_specs(http_server),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        generated = [
            i for s in trajectory.segments() for i, m in zip(s.ids, s.mask, strict=True) if m
        ]
        assert generated == [i for t in trajectory.turns for i in t.completion_ids]
        assert all(len(t.logprobs) == len(t.completion_ids) <= 16 for t in trajectory.turns)


def test_collections_are_tuned_while_runs_go_on_and_restored_after() -> None:
    """Overlapping runs: the first to start tunes, the last to end restores (not the first)."""
    import gc

    from rollout.engine import fewer_collections

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    first, second = fewer_collections(), fewer_collections()
    first.__enter__()
    assert gc.get_threshold()[0] >= 10_000 and gc.get_threshold()[1:] == before[1:]
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold()[0] >= 10_000  # the second run is still going
    second.__exit__(None, None, None)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)
