"""The task generator's parts that need no server: the answer and tool-name checks, argument
values harvested from outputs, reply parsing, the stratified split and the row format.
(End to end, with real MCP servers and models: tests/rollout/test_tasks_generate.py.)"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from envs.data.rows import Row, RowMetadata
from envs.data.validate import validate_files
from envs.taskgen.arguments import ArgumentMaker, ValuePool, schema_problem, shape
from envs.taskgen.checks import TaskChecker, answer_in
from envs.taskgen.generate import parse_task_list
from envs.taskgen.output import difficulty_of, row_line, split_rows
from envs.taskgen.records import Observation


def test_the_answer_check_is_a_normalised_whole_token_match() -> None:
    text = "Revenue was $1,815.4 million in FY2025 (see Notes/ADA.txt)."
    assert answer_in("$1,815.4 million", [text])
    assert answer_in("1,815.4 MILLION", [text])
    assert answer_in("notes/ada.txt", [text])
    assert not answer_in("815", [text])  # a piece of a figure is not the figure
    assert not answer_in("1,815.5 million", [text])
    assert not answer_in("...", [text])  # nothing left after normalising


def observations() -> list[Observation]:
    return [
        Observation(id="o1", tool="read_text_file", text="Ada Lovelace was born in 1815."),
        Observation(id="o2", tool="read_text_file", text="ENOENT", is_error=True),
        Observation(id="o3", tool="resource", text="Grace Hopper was born in 1906."),
    ]


def task(prompt: str, answer: str | None = "1815", ids: tuple[str, ...] = ("o1",)) -> dict:
    return {"prompt": prompt, "reference_answer": answer, "observation_ids": list(ids),
            "task_type": "Look-up"}  # fmt: skip


def test_each_drop_has_its_reason() -> None:
    checker = TaskChecker(observations(), ["read_text_file", "search", "echo"])
    cases = {
        "schema": {"prompt": "In which year?", "observation_ids": []},
        "unknown_observation": task("In which year was Ada born?", ids=("o9",)),
        "cites_errors": task("In which year was Ada born?", ids=("o2",)),
        "resource_only": task("In which year was Grace born?", "1906", ids=("o3",)),
        "names_tool": task("Call read-text-file: when was Ada Lovelace born?"),
        "answer_not_in_observations": task("When did Ada Lovelace die?", "1852"),
    }
    for reason, raw in cases.items():
        assert checker.check(raw) is None, reason
        assert checker.dropped[reason] == 1, reason
    kept = checker.check(task("In which year was Ada Lovelace born?"))
    assert kept is not None and kept.source_tools == ["read_text_file"]
    assert kept.task.task_type == "look_up"
    assert checker.check(task("In  which year was ADA LOVELACE born")) is None
    assert checker.dropped["duplicate"] == 1
    # An ordinary word that is also a tool's name is fine; naming it as a tool is not.
    assert checker.check(task("Search the notes: in which year was Ada Lovelace born?"))
    assert checker.check(task("Use the search tool: when was Ada Lovelace born?")) is None
    assert checker.check(task("With `echo`, say when Ada Lovelace was born.")) is None
    # No reference answer: nothing to match, the citation still has to hold.
    assert checker.check(task("Summarise the note about Ada Lovelace.", None))


def test_listed_names_become_paths_under_the_listed_directory() -> None:
    pool = ValuePool()
    pool.harvest("[FILE] ada.txt\n[DIR] archive\nnotes.md   41 B\n", {"path": "/data/notes"})
    assert {"/data/notes/ada.txt", "/data/notes/archive", "/data/notes/notes.md"} <= set(
        pool.strings
    )
    pool.harvest(json.dumps([{"name": "b.txt", "type": "file"}]), {"path": "/data"})
    assert "/data/b.txt" in pool.strings and "/data/type" not in pool.strings
    assert "name" not in pool.strings  # JSON keys are not values
    assert [shape(v) for v in ("a.txt", "/x/a.txt", "/x/dir", "file:///x", "Ada", "A b")] == [
        "file_name", "path_to_file", "path", "uri", "word", "phrase"
    ]  # fmt: skip


def test_arguments_follow_the_schema_and_learn_which_shapes_work() -> None:
    pool = ValuePool()
    pool.harvest("[FILE] a.txt\n[DIR] sub\n", {"path": "/root"})
    maker = ArgumentMaker(pool, random.Random(0))
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "mode": {"type": "string", "enum": ["fast", "slow"]},
            "limit": {"type": "integer", "minimum": 2, "maximum": 3},
        },
        "required": ["path", "mode", "limit"],
    }
    picked: Counter[str] = Counter()
    for _ in range(60):
        arguments = maker.arguments("list_dir", schema)
        assert arguments["mode"] in ("fast", "slow") and arguments["limit"] in (2, 3)
        kind = shape(arguments["path"])
        picked[kind] += 1
        maker.outcome(kind == "path")  # only directories work for this tool
    assert picked["path"] > picked["path_to_file"] + picked["file_name"]
    assert schema_problem({"type": "object", "properties": []}) is not None
    assert schema_problem({"type": "array"}) is not None
    assert schema_problem(schema) is None


def test_replies_are_read_as_task_lists_or_refused() -> None:
    item = {"prompt": "p"}
    assert parse_task_list(json.dumps({"tasks": [item]})) == [item]
    assert parse_task_list('<think>hmm</think>```json\n[{"prompt": "p"}]\n```') == [item]
    assert parse_task_list('Here you go: {"tasks": [{"prompt": "p"}]} Enjoy!') == [item]
    assert parse_task_list("I cannot help with that.") is None
    assert parse_task_list('{"answer": 42}') is None


def row(i: int, difficulty: str) -> Row:
    meta = RowMetadata.model_validate({"task_type": "lookup", "difficulty": difficulty})
    return Row(id=f"r{i}", prompt=f"question {i}?", reference_answer="1", metadata=meta)


def test_the_split_gives_val_the_same_share_of_every_difficulty() -> None:
    rows = (
        [row(i, "easy") for i in range(10)]
        + [row(10 + i, "hard") for i in range(6)]
        + [row(20 + i, "medium") for i in range(3)]
    )
    train, val = split_rows(rows, 0.25, seed=0)
    assert len(val) == 5 and len(train) == 14
    assert Counter(r.metadata.difficulty for r in val) == {"easy": 3, "hard": 1, "medium": 1}
    assert split_rows(rows, 0.25, seed=0) == (train, val)  # seeded
    assert split_rows(rows, 0.0, seed=0) == (rows, [])
    assert [difficulty_of(x) for x in (None, 1.0, 0.75, 0.5, 0.25, 0.0)] == [
        "unmeasured", "easy", "easy", "medium", "hard", "hard"
    ]  # fmt: skip


def test_unlabelled_rows_are_written_with_a_null_answer_and_validate_with_a_note(
    tmp_path: Path,
) -> None:
    unlabelled = row(1, "unmeasured").model_copy(update={"reference_answer": None})
    path = tmp_path / "rows.jsonl"
    path.write_text(row_line(row(0, "easy")) + "\n" + row_line(unlabelled) + "\n")
    line = json.loads(path.read_text().splitlines()[1])
    assert list(line)[:3] == ["id", "prompt", "reference_answer"]
    assert line["reference_answer"] is None
    report = validate_files([path])
    assert report.ok, report.problems
    assert report.notes == [
        f"1 row(s) in {path} have no reference_answer (null): valid, but the environment's "
        "grader cannot score them; they need a reference-free reward, a RULER judge alone "
        "(`toolgym rollout --ruler-model M --ruler-weight 1`; in a train config, `reward.ruler` "
        "with no grader share)"
    ]
    rendered = report.render()
    assert "note: 1 row(s)" in rendered and "unmeasured" in rendered  # its own column
