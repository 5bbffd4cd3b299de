"""README's "Train an agent on your MCP server", end to end with real parts.

A third-party MCP server (the npm reference server-filesystem over a directory of notes,
started over stdio, behind a `tools:` allowlist of read-only tools) is registered from a YAML
file listed in TOOLGYM_ENVS. `toolgym tasks generate` (the installed command, a process of its
own) explores it and a scripted task model (under uvicorn) writes tasks from what it was shown,
some with a reference answer and some without. `toolgym prior-check` plays the generated val
rows with the tiny local policy, and `toolgym train` runs GRPO on the generated train rows with
rewards from a RULER judge alone (a scripted judge under uvicorn). Nothing may be written to the
notes on the way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import envs.registry
from envs.data.rows import load_rows
from judgekit import scripted_judge
from mcpkit import counted, needs_node, server_command, started_pids
from rollout.ruler import render_prompt
from rollout.store import read_trajectories
from rollout.trajectory import Trajectory, group_trajectories
from taskgenkit import READING_TOOLS, fact_tasks, snapshot, tiny_embedder, write_notes, year_prompt
from taskmodelkit import shown_observations, task_model
from trainer.cli import main

pytestmark = [needs_node, pytest.mark.usefixtures("forget_new_envs")]

TOOLGYM = str(Path(sys.executable).with_name("toolgym"))
ENV_ID = "acme/Notes-v0"


def writer(body: dict[str, Any]) -> str:
    """For every fact it is shown: a year question (checkable) and a summary (no answer)."""
    tasks: list[dict[str, Any]] = []
    for person, year, observation in fact_tasks(shown_observations(body)):
        tasks += [
            {"prompt": year_prompt(person), "reference_answer": year,
             "observation_ids": [observation], "task_type": "lookup"},
            {"prompt": f"Summarise what the notes say about {person}.", "reference_answer": None,
             "observation_ids": [observation], "task_type": "summary"},
        ]  # fmt: skip
    return json.dumps({"tasks": tasks})


def write_env_file(folder: Path, notes: Path, starts: Path) -> Path:
    """The environment file of README's story; its command counts the server's starts."""
    spec = {
        "id": ENV_ID,
        "dataset": "tasks/train.jsonl",  # written by `toolgym tasks generate --out tasks`
        "transport": "stdio",
        "command": counted(server_command("filesystem", str(notes)), starts),
        "isolation": "pool",  # read-only tools: one process may serve every episode
        "tools": READING_TOOLS,
        "limits": {"max_turns": 2},
    }
    path = folder / "notes.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def trajectories(folder: Path) -> list[Trajectory]:
    return [t for p in sorted(folder.glob("*.jsonl")) for t in read_trajectories(p).trajectories]


def train_config(folder: Path, model: Path, judge: str) -> Path:
    config = {
        "base_model": str(model),
        "environment": {"id": ENV_ID},
        "train_dataset": "tasks/train.jsonl",  # relative to this file
        "val_dataset": "tasks/val.jsonl",
        "policy": {"backend": "local", "max_tokens_per_turn": 6, "concurrency": 8},
        "reward": {"grader": 0, "ruler": {"judge": judge}},
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "group_size": 3,
        "batch_size": 2,
        "steps": 1,
        "eval_every": 1,
        "learning_rate": 1e-3,
        "output_dir": "run",
        "seed": 1,  # step 1 then plays a summary (no answer) and a year question
    }
    path = folder / "notes-train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_an_agent_on_a_third_party_mcp_server(
    tmp_path: Path,
    tiny_policy_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    notes = write_notes(tmp_path / "notes")
    before = snapshot(notes)
    starts = tmp_path / "starts"
    monkeypatch.setenv("TOOLGYM_ENVS", str(write_env_file(tmp_path, notes, starts)))
    embedder = tiny_embedder(tmp_path_factory)
    tasks = tmp_path / "tasks"

    # 1. Tasks from the server itself, by the installed command (its env from TOOLGYM_ENVS).
    with task_model(writer) as model:
        generated = subprocess.run(
            [TOOLGYM, "tasks", "generate", "--env", ENV_ID, "--model", model.spec(),
             "--out", "tasks", "--n", "12", "--max-calls", "30", "--val-share", "0.25",
             "--embedding-model", str(embedder), "--no-progress"],
            capture_output=True, text=True, timeout=120, env=dict(os.environ), cwd=tmp_path,
        )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert "wrote tasks/train.jsonl" in generated.stdout
    train_rows, val_rows = load_rows(tasks / "train.jsonl"), load_rows(tasks / "val.jsonl")
    assert {r.metadata.extra("env_id") for r in train_rows + val_rows} == {ENV_ID}
    assert any(r.reference_answer is None for r in train_rows)
    unlabelled_val = sum(1 for r in val_rows if r.reference_answer is None)
    assert 0 < unlabelled_val < len(val_rows)  # seed 0 puts both kinds in val
    assert len(started_pids(starts)) == 1

    # Every later command registers the file as `import envs` does in a fresh process.
    envs.registry.load_yaml_from_env()

    # 2. The prior check plays the val rows a grader can score, and says what it left out.
    status = main(
        ["prior-check", "--env", ENV_ID, "--dataset", str(tasks / "val.jsonl"),
         "--policy", "local", "--model", str(tiny_policy_dir), "--max-tokens", "6",
         "--rows", "8", "--attempts", "2", "--no-progress"]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert status in (0, 1), printed.err  # 1: the verdict says "not learnable"
    assert f"rows {len(val_rows) - unlabelled_val} x 2 attempts" in printed.out
    assert f"left out: {unlabelled_val} row(s) without a reference_answer" in printed.out
    assert re.search(r"pass@1 [\d.]+  pass@2 [\d.]+  headroom", printed.out)

    # 3. GRPO on the generated rows, rewards from the judge alone: no answers needed.
    with scripted_judge() as judge:
        config = train_config(tmp_path, tiny_policy_dir, judge.spec)
        started = len(started_pids(starts))
        status = main(["train", "--config", str(config), "--quiet"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    out = tmp_path / "run"
    assert (out / "adapters" / "v0001" / "adapter_config.json").is_file()
    assert len(started_pids(starts)) > started  # the episodes reached the real server

    prompts = {r.id: r.prompt for r in train_rows + val_rows}
    labelled = {r.id for r in train_rows + val_rows if r.reference_answer is not None}
    groups = group_trajectories(trajectories(out / "rollouts"))
    assert len(groups) == 2
    assert any(g.row_id not in labelled for g in groups)  # a task without an answer trained
    for group in groups:
        attempts = sorted(group.trajectories, key=lambda t: t.sample_index)
        # one request per group, every attempt in it, in order
        (request,) = judge.script.for_task(prompts[group.row_id])
        assert request.prompt == render_prompt(prompts[group.row_id], attempts)
        assert len(request.attempts) == len(attempts) == 3
        assert [t.reward for t in attempts] == request.scores  # the judge's scores, alone
        for t in attempts:
            # weight 0: the grader's score of a labelled row is kept to read, not rewarded
            assert t.scores["ruler"] == t.reward and t.error is None
            assert ("grader" in t.scores) == (group.row_id in labelled)
            assert t.env_id == ENV_ID and t.tools == READING_TOOLS  # the allowlist, no more
    evaluated = trajectories(out / "eval")  # val at steps 0 and 1: one judged greedy attempt
    assert len(evaluated) == 2 * len(val_rows)
    assert all(t.reward is not None and t.scores["ruler"] == t.reward for t in evaluated)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 1 and records[-1]["judge_failed_groups"] == 0
    assert records[-1]["val_reward"] is not None

    assert snapshot(notes) == before  # nothing written, moved or touched
