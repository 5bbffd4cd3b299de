"""Shared by the `toolgym tasks generate` tests: notes with one fact each, task-model scripts
that answer from the observations they are shown, and the CLI run in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import envs
from mcpkit import server_command
from taskmodelkit import Shown, TaskModel, shown_observations
from toolservers.local_model import build_static_model
from trainer.cli import main

FACTS = {
    "ada.txt": ("Ada Lovelace", "1815", "London"),
    "grace.txt": ("Grace Hopper", "1906", "New York City"),
    "alan.txt": ("Alan Turing", "1912", "Maida Vale"),
    "edsger.txt": ("Edsger Dijkstra", "1930", "Rotterdam"),
    "barbara.txt": ("Barbara Liskov", "1939", "Los Angeles"),
    "donald.txt": ("Donald Knuth", "1938", "Milwaukee"),
}
READ_ONLY_FS = {
    "read_file",
    "read_text_file",
    "read_media_file",
    "read_multiple_files",
    "list_directory",
    "list_directory_with_sizes",
    "directory_tree",
    "search_files",
    "get_file_info",
    "list_allowed_directories",
}
READING_TOOLS = ["list_allowed_directories", "list_directory", "read_text_file"]
WRITE_FS = {"write_file", "edit_file", "create_directory", "move_file"}


def year_prompt(person: str) -> str:
    return f"In which year was {person} born?"


def fact_tasks(shown: list[Shown]) -> list[tuple[str, str, str]]:
    """(person, year, observation id) for every fact the shown observations state."""
    found = []
    for observation in shown:
        for person, year, _ in FACTS.values():
            if f"{person} was born" in observation.text:
                found.append((person, year, observation.id))
    return found


def clean_writer(body: dict[str, Any]) -> str:
    """One year question per fact shown, and one unlabelled task about Ada Lovelace."""
    found = fact_tasks(shown_observations(body))
    tasks: list[dict[str, Any]] = [
        {"prompt": year_prompt(p), "reference_answer": y, "observation_ids": [o],
         "task_type": "lookup"}
        for p, y, o in found
    ]  # fmt: skip
    tasks += [
        {"prompt": "Summarise what the notes say about Ada Lovelace.", "reference_answer": None,
         "observation_ids": [o], "task_type": "summary"}
        for p, _, o in found
        if p == "Ada Lovelace"
    ]  # fmt: skip
    return json.dumps({"tasks": tasks})


def writer_with_a_fallback(body: dict[str, Any]) -> str:
    """clean_writer's tasks, and one about the allowed directory, which the first call
    (list_allowed_directories, no arguments) always shows: never zero tasks, whatever was read."""
    tasks = json.loads(clean_writer(body))["tasks"]
    for shown in shown_observations(body):
        if shown.text.startswith("Allowed directories:"):
            folder = shown.text.splitlines()[1].strip()
            tasks.append(
                {"prompt": "Which directory holds the notes?", "reference_answer": folder,
                 "observation_ids": [shown.id], "task_type": "lookup"}
            )  # fmt: skip
    return json.dumps({"tasks": tasks})


def write_notes(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, (person, year, city) in FACTS.items():
        (root / name).write_text(f"{person} was born in {city} in {year}.\n")
    (root / "todo.md").write_text("Buy milk.\nCall the plumber on Tuesday.\n")
    return root


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def register_env(folder: Path, env_id: str, **spec: Any) -> str:
    """A YAML environment whose dataset does not exist yet: generating it is the point."""
    path = folder / f"{env_id.split('/')[-1]}.yaml"
    path.write_text(json.dumps({"id": env_id, "dataset": "not-yet.jsonl", **spec}))
    return envs.register_yaml(path)


def generate(
    capsys: pytest.CaptureFixture[str], env_id: str, model: TaskModel, out: Path, *extra: str
) -> tuple[int, str, str]:
    argv = [
        "tasks", "generate", "--env", env_id, "--model", model.spec(), "--out", str(out),
        # TASKGEN_SEED: the same tests under another seed (they must pass under any).
        "--seed", os.environ.get("TASKGEN_SEED", "0"), "--no-progress", *extra,
    ]  # fmt: skip
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def one_line_failure(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("toolgym") and ": error: " in lines[0]
    assert "Traceback" not in err
    return lines[0]


def exit_status(argv: list[str]) -> int:
    """`main(argv)`'s status; argparse's usage errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


_EMBEDDERS: dict[str, Path] = {}


def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny static sentence-transformers model trained on these notes and questions (built
    once per test process)."""
    if "model" not in _EMBEDDERS:
        corpus = tmp_path_factory.mktemp("embed-corpus")
        for name, (person, year, city) in FACTS.items():
            (corpus / name).write_text(
                f"{person} was born in {city} in {year}. {year_prompt(person)} "
                f"Summarise what the notes say about {person}. Which programming language?\n"
            )
        out = tmp_path_factory.mktemp("embedder")
        _EMBEDDERS["model"] = build_static_model(corpus, out, dimension=64)
    return _EMBEDDERS["model"]


def notes_server_env(folder: Path, notes: Path, tools: list[str] | None = None) -> str:
    """server-filesystem over `notes` as an environment; with `tools`, behind that allowlist."""
    command = server_command("filesystem", str(notes))
    if tools is None:
        return register_env(folder, "acme/Notes-v0", transport="stdio", command=command)
    return register_env(folder, "acme/Reading-v0", transport="stdio", command=command, tools=tools)
