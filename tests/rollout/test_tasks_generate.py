"""`toolgym tasks generate` end to end, with real parts: the npm reference MCP servers over
stdio (server-filesystem over a directory of notes, server-memory pre-seeded), a scripted
OpenAI-compatible task model under uvicorn that answers from the observations it is shown,
and a tiny local embedding model for near-duplicates. Difficulty and bad inputs:
test_tasks_difficulty.py.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from envs.data.rows import load_rows
from envs.data.validate import validate_files
from mcpkit import needs_node, server_command
from taskgenkit import (
    READ_ONLY_FS,
    READING_TOOLS,
    WRITE_FS,
    fact_tasks,
    generate,
    notes_server_env,
    one_line_failure,
    read_jsonl,
    register_env,
    snapshot,
    tiny_embedder,
    write_notes,
    writer_with_a_fallback,
    year_prompt,
)
from taskmodelkit import shown_observations, task_model

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


def writer_with_junk(body: dict[str, Any]) -> str:
    """Grounded tasks plus one of each kind the checks must drop."""
    found = fact_tasks(shown_observations(body))
    tasks: list[dict[str, Any]] = [
        {"prompt": year_prompt(p), "reference_answer": y, "observation_ids": [o],
         "task_type": "lookup"}
        for p, y, o in found
    ]  # fmt: skip
    if found:
        person, year, obs = found[0]
        tasks += [
            {"prompt": f"Summarise what the notes say about {person}.",
             "reference_answer": None, "observation_ids": [obs], "task_type": "summary"},
            {"prompt": f"{person} was born in which year?", "reference_answer": year,
             "observation_ids": [obs], "task_type": "lookup"},  # a near-duplicate
            {"prompt": f"Which programming language did {person} create?",
             "reference_answer": "Python", "observation_ids": [obs], "task_type": "lookup"},
            {"prompt": f"Use read_text_file to find the year {person} was born.",
             "reference_answer": year, "observation_ids": [obs], "task_type": "lookup"},
            {"prompt": f"Where exactly was {person} born?", "reference_answer": "London",
             "observation_ids": ["o999"], "task_type": "lookup"},
            {"prompt": "Hi", "observation_ids": []},
        ]  # fmt: skip
    return json.dumps({"tasks": tasks})


def test_generation_end_to_end_over_server_filesystem(
    tmp_path: Path, notes: Path, notes_env: str, embedder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(notes)
    out = tmp_path / "tasks"
    with task_model(writer_with_junk) as model:
        status, stdout, err = generate(
            capsys, notes_env, model, out, "--n", "20", "--max-calls", "80",
            "--embedding-model", str(embedder), "--val-share", "0.25", "--per-request", "4",
        )  # fmt: skip
    assert status == 0, err
    assert snapshot(notes) == before  # nothing written, moved or touched
    report = json.loads((out / "generation-report.json").read_text())
    observations = {o["id"]: o for o in read_jsonl(out / "observations.jsonl")}
    called = {o["tool"] for o in observations.values()}
    assert called <= READ_ONLY_FS and "read_text_file" in called | {"read_file"}
    tools = {t["name"]: t for t in report["tools"]}
    assert tools["write_file"]["read_only"] is False and tools["write_file"]["calls"] == 0
    assert "may write" in tools["write_file"]["skipped"]
    assert report["exploration"]["calls"] == len(observations) <= 80

    # The data validator accepts the files; every kept task is grounded, none names a tool.
    validation = validate_files([out / "train.jsonl", out / "val.jsonl"])
    assert validation.ok, validation.problems
    assert any("no reference_answer" in note for note in validation.notes)
    rows = load_rows(out / "train.jsonl") + load_rows(out / "val.jsonl")
    assert len(rows) == report["checks"]["kept"] >= 2
    raw_lines = read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl")
    assert any(line["reference_answer"] is None for line in raw_lines)  # null, written out
    for row in rows:
        cited = [observations[i] for i in row.metadata.extra("observation_ids")]
        assert row.metadata.extra("env_id") == notes_env
        assert row.metadata.task_type in {"lookup", "summary"}
        assert row.metadata.difficulty == "unmeasured"  # no --policy: nothing measured
        if row.reference_answer is not None:
            assert any(str(row.reference_answer) in o["text"] for o in cited), row
        assert not any(name in row.prompt for name in tools), row.prompt
    assert len({row.prompt for row in rows}) == len(rows)

    dropped = report["checks"]["dropped"]
    for reason in (
        "schema", "unknown_observation", "names_tool", "answer_not_in_observations",
        "near_duplicate",
    ):  # fmt: skip
        assert dropped.get(reason, 0) >= 1, (reason, dropped)
    # The model was asked for structured output and shown what the explorer saw.
    first = model.requests[0]
    assert first["response_format"]["type"] == "json_schema"
    assert shown_observations(first)
    assert report["split"]["val"]["rows"] == round(len(rows) * 0.25)
    assert "kept" in stdout and "wrote" in stdout


def test_writes_only_with_the_flag_and_only_tools_annotated_as_writing(
    tmp_path: Path, notes: Path, notes_env: str, embedder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with task_model(writer_with_a_fallback) as model:
        status, _, err = generate(
            capsys, notes_env, model, tmp_path / "tasks", "--n", "3", "--max-calls", "40",
            "--embedding-model", str(embedder), "--allow-writes",
        )  # fmt: skip
    assert status == 0, err
    report = json.loads((tmp_path / "tasks" / "generation-report.json").read_text())
    tools = {t["name"]: t for t in report["tools"]}
    observed = Counter(o["tool"] for o in read_jsonl(tmp_path / "tasks" / "observations.jsonl"))
    writes = {name for name in observed if name in WRITE_FS}
    assert "write_file" in writes  # the flag lets it be called...
    for name in writes:  # ...and only tools whose annotations say they are not read-only
        assert tools[name]["read_only"] is False and tools[name]["calls"] == observed[name]


def test_resources_are_read_and_an_allowlist_is_respected(
    tmp_path: Path, embedder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tmp_path / "memory.jsonl"
    entity = {"type": "entity", "name": "Ada Lovelace", "entityType": "person",
              "observations": ["Ada Lovelace was born in London in 1815."]}  # fmt: skip
    graph.write_text(json.dumps(entity) + "\n")
    env_id = register_env(
        tmp_path,
        "acme/Memory-v0",
        transport="stdio",
        command=server_command("memory"),
        env={"MEMORY_FILE_PATH": str(graph)},
        tools=["read_graph", "search_nodes"],
    )

    def writer(body: dict[str, Any]) -> str:
        shown = shown_observations(body)
        tasks = [
            {"prompt": year_prompt("Ada Lovelace"), "reference_answer": "1815",
             "observation_ids": [o.id], "task_type": "lookup"}
            for o in shown
            if "1815" in o.text
        ]  # fmt: skip
        return json.dumps({"tasks": tasks})

    with task_model(writer) as model:
        status, _, err = generate(
            capsys, env_id, model, tmp_path / "tasks", "--n", "2", "--max-calls", "12",
            "--embedding-model", str(embedder),
        )  # fmt: skip
    assert status == 0, err
    observations = read_jsonl(tmp_path / "tasks" / "observations.jsonl")
    assert any(o["tool"] == "resource" and "1815" in o["text"] for o in observations)
    assert {o["tool"] for o in observations} <= {"resource", "read_graph", "search_nodes"}
    report = json.loads((tmp_path / "tasks" / "generation-report.json").read_text())
    assert report["checks"]["dropped"].get("resource_only", 0) >= 1  # the resource's own task
    rows = load_rows(tmp_path / "tasks" / "train.jsonl") + load_rows(
        tmp_path / "tasks" / "val.jsonl"
    )
    assert rows and all(r.metadata.extra("source_tools") for r in rows)


def test_garbage_replies_are_retried_then_counted(
    tmp_path: Path, reading_env: str, embedder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    attempts: Counter[str] = Counter()

    def flaky(body: dict[str, Any]) -> str:
        key = json.dumps(body["messages"])
        attempts[key] += 1
        return "Sure! Here are some tasks:" if attempts[key] == 1 else writer_with_a_fallback(body)

    with task_model(flaky) as model:
        status, _, err = generate(
            capsys, reading_env, model, tmp_path / "tasks", "--n", "3", "--max-calls", "40",
            "--embedding-model", str(embedder),
        )  # fmt: skip
    assert status == 0, err
    generation = json.loads((tmp_path / "tasks" / "generation-report.json").read_text())[
        "generation"
    ]
    assert generation["malformed_replies"] == generation["retries"] == generation["requests"]
    assert generation["failed_requests"] == 0


def test_a_model_that_returns_garbage_every_time_fails_in_one_line(
    tmp_path: Path, notes_env: str, embedder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tasks"
    with task_model(lambda body: "I cannot help with that.") as model:
        status, _, err = generate(
            capsys, notes_env, model, out, "--n", "3", "--max-calls", "20",
            "--embedding-model", str(embedder), "--max-retries", "1",
        )  # fmt: skip
    assert status == 2
    line = one_line_failure(err)
    assert "no usable task list" in line and "'I cannot help with that.'" in line
    assert len(model.requests) == 3 * 2  # three requests in a row, each tried twice
    assert not out.exists()


def test_zero_valid_tasks_exits_2_and_leaves_out_as_it_was(
    tmp_path: Path, notes_env: str, embedder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tasks"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def made_up(body: dict[str, Any]) -> str:
        ids = [o.id for o in shown_observations(body)]
        task = {"prompt": "Who painted the Mona Lisa?", "reference_answer": "Leonardo",
                "observation_ids": ids[:1], "task_type": "lookup"}  # fmt: skip
        return json.dumps({"tasks": [task]})

    with task_model(made_up) as model:
        status, _, err = generate(
            capsys, notes_env, model, out, "--n", "3", "--max-calls", "20",
            "--embedding-model", str(embedder),
        )  # fmt: skip
    assert status == 2
    line = one_line_failure(err)
    assert "no valid tasks" in line and "answer_not_in_observations" in line
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tasks-")]  # no scratch


ODD_SERVER = '''
from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

server = MCPServer(name="odd", log_level="WARNING")
READ_ONLY = ToolAnnotations(readOnlyHint=True)


@server.tool(annotations=READ_ONLY)
def motto() -> str:
    """The guild's motto."""
    return "The motto of the Acme guild is Festina lente."


@server.tool(annotations=READ_ONLY)
def broken(x: str) -> str:
    """A tool whose listed schema is unusable."""
    return x


listed = server.list_tools


async def list_tools():
    tools = await listed()
    for tool in tools:
        if tool.name == "broken":
            tool.input_schema = {"type": "object", "properties": "not-a-map"}
    return tools


server.list_tools = list_tools
server.run("stdio")
'''


def test_a_tool_with_an_invalid_schema_is_skipped_with_one_warning(
    tmp_path: Path, embedder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    script = tmp_path / "odd.py"
    script.write_text(ODD_SERVER)
    env_id = register_env(
        tmp_path, "acme/Odd-v0", transport="stdio", command=[sys.executable, str(script)]
    )

    def writer(body: dict[str, Any]) -> str:
        ids = [o.id for o in shown_observations(body) if "Festina lente" in o.text]
        task = {"prompt": "What is the motto of the Acme guild?",
                "reference_answer": "Festina lente", "observation_ids": ids[:1],
                "task_type": "lookup"}  # fmt: skip
        return json.dumps({"tasks": [task] if ids else []})

    with task_model(writer) as model:
        status, _, err = generate(
            capsys, env_id, model, tmp_path / "tasks", "--n", "1", "--max-calls", "5",
            "--embedding-model", str(embedder), "--val-share", "0",
        )  # fmt: skip
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.strip()]
    assert warnings == [
        "warning: tool 'broken' skipped: the input schema's properties are not an object"
    ]
    report = json.loads((tmp_path / "tasks" / "generation-report.json").read_text())
    broken = next(t for t in report["tools"] if t["name"] == "broken")
    assert broken["calls"] == 0 and broken["skipped"].startswith("invalid input schema")
