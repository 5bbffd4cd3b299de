"""`toolgym tasks generate` measuring difficulty with a policy (a fake vLLM with known pass
rates, and the tiny local transformers policy), and its bad inputs, each one line and exit 2."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from pathlib import Path

import pytest
from _servers import fake_vllm

from envs.data.rows import load_rows
from mcpkit import needs_node
from rollout.fake_vllm import DEFAULT_MODEL, ChatRequest, FakeSettings
from taskgenkit import (
    FACTS,
    READING_TOOLS,
    clean_writer,
    exit_status,
    generate,
    notes_server_env,
    one_line_failure,
    read_jsonl,
    register_env,
    tiny_embedder,
    write_notes,
)
from taskmodelkit import task_model
from trainer.cli import main

pytestmark = [needs_node, pytest.mark.usefixtures("forget_new_envs")]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_embedder(tmp_path_factory)


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    return write_notes(tmp_path / "notes")


@pytest.fixture
def notes_env(tmp_path: Path, notes: Path) -> str:
    return notes_server_env(tmp_path, notes)


@pytest.fixture
def reading_env(tmp_path: Path, notes: Path) -> str:
    """The notes behind a three-tool allowlist: 40 calls surely read every note."""
    return notes_server_env(tmp_path, notes, READING_TOOLS)


MEDIUM = ("Alan Turing", "Edsger Dijkstra")
HARD = ("Barbara Liskov", "Donald Knuth")


class KnownPassRates:
    """A policy that always knows two people's birth years, half the time two others', never
    the last two's: pass rates 1, 0.5 and 0, whatever order the episodes run in."""

    def __init__(self) -> None:
        self.asked: Counter[str] = Counter()
        self.years = {person: year for person, year, _ in FACTS.values()}

    def __call__(self, request: ChatRequest) -> str:
        prompt = next(str(m["content"]) for m in request.messages if m.get("role") == "user")
        person = next((p for p in self.years if p in prompt), "")
        self.asked[person] += 1
        knows = person not in HARD and (person not in MEDIUM or self.asked[person] % 2 == 1)
        return f"Answer: {self.years[person]}" if knows else "Answer: I do not know."


def test_difficulty_is_measured_and_the_split_stratified_by_it(
    tmp_path: Path, reading_env: str, embedder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tasks"
    with (
        task_model(clean_writer) as model,
        fake_vllm(FakeSettings(script=KnownPassRates())) as vllm,
    ):
        status, stdout, err = generate(
            capsys, reading_env, model, out, "--n", "20", "--max-calls", "40",
            "--per-request", "2", "--embedding-model", str(embedder),
            "--policy", f"{DEFAULT_MODEL}@{vllm.url}/v1", "--attempts", "4",
            "--val-share", "0.5",
        )  # fmt: skip
    assert status == 0, err
    train, val = load_rows(out / "train.jsonl"), load_rows(out / "val.jsonl")
    by_person = {}
    for row in train + val:
        if row.reference_answer is None:
            assert row.metadata.difficulty == "unmeasured"
            assert row.metadata.extra("pass_rate") is None
            continue
        person = next(p for p, _, _ in FACTS.values() if p in row.prompt)
        by_person[person] = (row.metadata.extra("pass_rate"), row.metadata.difficulty)
        assert row.metadata.extra("probe_attempts") == 4
    expected = {
        person: (0.0, "hard") if person in HARD else (0.5, "medium") if person in MEDIUM
        else (1.0, "easy")
        for person, _, _ in FACTS.values()
    }  # fmt: skip
    assert by_person == expected
    # val holds half of every difficulty: one of each pair, and the one unmeasured row.
    assert Counter(r.metadata.difficulty for r in val) == {
        "easy": 1, "medium": 1, "hard": 1, "unmeasured": 1
    }  # fmt: skip
    report = json.loads((out / "generation-report.json").read_text())
    observed = {o["tool"] for o in read_jsonl(out / "observations.jsonl")}
    assert observed <= set(READING_TOOLS)  # the allowlist holds for exploration too
    assert report["probe"]["probed"] == 6 and report["probe"]["unlabelled"] == 1
    assert report["probe"]["pass_at_1"] == pytest.approx(0.5)
    assert report["split"]["stratified_by"] == "measured difficulty"
    assert "probe (4 attempts" in stdout


def test_the_tiny_local_policy_is_probed_on_every_labelled_task(
    tmp_path: Path,
    reading_env: str,
    embedder: Path,
    tiny_policy_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "tasks"
    with task_model(clean_writer) as model:
        status, _, err = generate(
            capsys, reading_env, model, out, "--n", "3", "--max-calls", "40",
            "--embedding-model", str(embedder), "--policy", str(tiny_policy_dir),
            "--attempts", "2", "--probe-max-tokens", "4", "--concurrency", "4",
        )  # fmt: skip
    assert status == 0, err
    rows = load_rows(out / "train.jsonl") + load_rows(out / "val.jsonl")
    labelled = [r for r in rows if r.reference_answer is not None]
    assert labelled
    for row in labelled:
        rate = row.metadata.extra("pass_rate")
        assert isinstance(rate, float) and 0.0 <= rate <= 1.0
        assert row.metadata.extra("probe_attempts") == 2
        assert row.metadata.difficulty in ("easy", "medium", "hard")


UNREACHABLE_MODEL = "writer@http://127.0.0.1:9/v1"  # nothing listens on port 9


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("--env acme/Nope-v0", "no environment 'acme/Nope-v0' is registered"),
        ("--env {env} --model writer", "--model: expected NAME@http://host:port/v1"),
        ("--env {env} --val-share 1", "--val-share: expected a number from 0 to below 1"),
        ("--env {env} --n 0", "--n: expected a whole number >= 1"),
        ("--env {env} --out {tmp}/file.txt", "is a file; tasks generate writes a directory"),
        ("--env {env} --policy {tmp}/no-model", "no-model is not a model directory"),
        ("--env {env} --embedding-model {tmp}/no-model", "no-model: no such directory"),
        ("--env {env} --embedding-model {tmp}/empty", "could not be loaded"),
        ("--env {env} --embedding-model acme/not-cached", "could not be loaded"),  # offline
        ("--env acme/Dead-v0", "/nonexistent/mcp-server"),
        ("--env {env}", "could not be reached"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path,
    notes_env: str,
    embedder: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    fragment: str,
) -> None:
    register_env(tmp_path, "acme/Dead-v0", transport="stdio", command=["/nonexistent/mcp-server"])
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    argv = [
        "tasks", "generate", "--model", UNREACHABLE_MODEL, "--out", str(tmp_path / "out"),
        "--embedding-model", str(embedder), "--max-calls", "5", "--no-progress",
    ]  # fmt: skip
    argv += shlex.split(command.format(env=notes_env, tmp=tmp_path))
    assert exit_status(argv) == 2
    line = one_line_failure(capsys.readouterr().err)
    assert fragment in line, line
    assert not (tmp_path / "out").exists()


def test_help_works(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tasks", "generate", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--env", "--model", "--allow-writes", "--policy", "--embedding-model"):
        assert flag in text
