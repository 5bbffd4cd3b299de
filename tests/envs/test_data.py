"""Dataset rows, validation, the filings dataset builder, its oracle, and the TAT-QA importer."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from envs.data.build import build_command, build_dataset
from envs.data.oracle import OracleError, oracle_answer_from_texts, oracle_plan, strip_paging
from envs.data.rows import DatasetError, Expected, Row, RowMetadata, load_rows, write_rows
from envs.data.tatqa import import_tatqa, import_tatqa_command
from envs.data.validate import validate_command, validate_files
from toolservers.corpus import Corpus
from toolservers.synth import Fact, load_facts, synthesize_corpus

TATQA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tatqa"
TATQA_DEV = TATQA / "tatqa_dataset_dev.json"


@dataclass(frozen=True)
class Built:
    corpus: Path
    out: Path
    train: list[Row]
    val: list[Row]
    facts: dict[tuple[str, str, str], Fact]
    texts: dict[str, str]  # corpus path -> the text the read tool serves

    @property
    def rows(self) -> list[Row]:
        return self.train + self.val


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    corpus = tmp_path_factory.mktemp("filings_corpus")
    synthesize_corpus(corpus, seed=0)
    out = tmp_path_factory.mktemp("filings_dataset")
    build_dataset(corpus, out, seed=0)
    view = Corpus(corpus)
    return Built(
        corpus=corpus,
        out=out,
        train=load_rows(out / "train.jsonl"),
        val=load_rows(out / "val.jsonl"),
        facts={(f.company, f.period, f.metric): f for f in load_facts(corpus / "facts.jsonl")},
        texts={p: view.text(p) for p in view.paths},
    )


def _recipe(row: Row) -> dict[str, object]:
    recipe = row.metadata.extra("recipe")
    assert isinstance(recipe, dict)
    return recipe


# -- the filings dataset ---------------------------------------------------------------------


def test_size_and_val_share(built: Built) -> None:
    assert len(built.rows) >= 600
    assert 0.10 <= len(built.val) / len(built.rows) <= 0.20
    assert {r.metadata.difficulty for r in built.rows} == {"easy", "medium", "hard"}


def test_split_is_stratified(built: Built) -> None:
    def stratum(r: Row) -> tuple[str, str]:
        return (r.metadata.task_type, r.metadata.difficulty)

    train, val = Counter(map(stratum, built.train)), Counter(map(stratum, built.val))
    assert set(train) == set(val)
    assert {k[0] for k in train} >= {"lookup", "ratio", "growth", "comparison", "aggregate"}
    for key in train:
        assert 0.10 <= val[key] / (val[key] + train[key]) <= 0.20, key


def test_no_overlap_between_splits(built: Built) -> None:
    ids = [r.id for r in built.rows]
    assert len(ids) == len(set(ids))
    assert not {r.prompt for r in built.train} & {r.prompt for r in built.val}
    assert len({r.prompt for r in built.rows}) == len(built.rows)


def _number(reference: str) -> float:
    m = re.fullmatch(
        r"(-?)\$?([\d,]+\.?\d*)(%| million| million shares| percentage points)?", reference
    )
    assert m, reference
    return float(m[1] + m[2].replace(",", ""))


def _recompute(row: Row, facts: dict[tuple[str, str, str], Fact]) -> float | str:
    """The answer from facts.jsonl with plain float arithmetic (independent of the builder)."""
    recipe = _recipe(row)
    refs = recipe["facts"]
    assert isinstance(refs, list)
    found = [facts[(f["company"], f["period"], f["metric"])] for f in refs]
    v = [f.value for f in found]
    op = recipe["op"]
    if op in ("argmax", "argmin"):
        pick = max if op == "argmax" else min
        return pick(found, key=lambda f: f.value).company
    if op == "ratio":
        return v[0] / v[1] * (100 if recipe["answer_format"] == "percent" else 1)
    if op == "growth":
        return (v[0] - v[1]) / v[1] * 100
    if op == "difference":
        return v[0] - v[1]
    return sum(v)  # lookup (one figure) or sum


def test_references_match_recomputation_from_facts(built: Built) -> None:
    for row in built.rows:
        expected = _recompute(row, built.facts)
        if isinstance(expected, str):
            assert row.grader == "string" and row.reference_answer == expected, row.id
            continue
        assert row.grader == "numeric" and isinstance(row.reference_answer, str)
        tol = row.expected.tolerance_rel
        assert tol is not None and tol <= 0.05, row.id
        ref = _number(row.reference_answer)
        # An answer computed exactly from the stated figures must pass the row's tolerance.
        assert abs(expected - ref) <= tol * abs(ref) + 1e-9, (row.id, expected, ref, tol)


def test_lookup_references_are_the_stated_display(built: Built) -> None:
    wrap = {
        "usd_millions": "${} million",
        "percent": "{}",
        "usd_per_share": "${}",
        "shares_millions": "{} million shares",
    }
    for row in (r for r in built.rows if r.metadata.task_type == "lookup"):
        ref = _recipe(row)["facts"]
        assert isinstance(ref, list)
        f = built.facts[(ref[0]["company"], ref[0]["period"], ref[0]["metric"])]
        shown = wrap[f.unit].format(f.display.lstrip("-"))
        assert row.reference_answer == ("-" if f.display.startswith("-") else "") + shown


def test_prompts_name_company_and_period(built: Built) -> None:
    roster = {key[0] for key in built.facts}
    months = ("March 31", "June 30", "September 30", "December 31")
    for row in built.rows:
        named = set(row.metadata.extra("companies"))
        assert all(c in row.prompt for c in named), row.id
        # Another issuer's name may appear only inside a named one ("Apex Materials" Group).
        for other in roster - named:
            assert other not in row.prompt or any(c.startswith(other) for c in named), row.id
        assert any(m in row.prompt for m in months), row.prompt
        assert row.expected.must_use_tools == ["search", "read"]


def test_evidence_paths_exist_and_validate_clean(built: Built) -> None:
    for row in built.rows:
        paths = row.expected.evidence_paths()
        assert paths and all((built.corpus / p).is_file() for p in paths)
        assert set(oracle_plan(row).paths) == set(paths)
    files = [built.out / "train.jsonl", built.out / "val.jsonl"]
    report = validate_files(files, built.corpus)
    assert report.ok, report.render()


def test_deterministic_given_seed(built: Built, tmp_path: Path) -> None:
    build_dataset(built.corpus, tmp_path / "again", seed=0)
    build_dataset(built.corpus, tmp_path / "other", seed=1)
    for name in ("train.jsonl", "val.jsonl"):
        first = (built.out / name).read_bytes()
        assert (tmp_path / "again" / name).read_bytes() == first
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != (
        built.out / "train.jsonl"
    ).read_bytes()


def test_build_command_prints_counts(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert build_command(built.corpus, tmp_path / "cmd", seed=0) == 0
    out = capsys.readouterr().out
    assert "train" in out and "val" in out and "lookup" in out and "hard" in out
    with pytest.raises(DatasetError, match=r"no facts\.jsonl"):  # the CLI: one line, exit 2
        build_command(tmp_path / "missing", tmp_path / "cmd2", seed=0)


# -- the oracle --------------------------------------------------------------------------------


def test_oracle_reproduces_every_reference_from_document_text(built: Built) -> None:
    for row in built.rows:
        texts = {p: built.texts[p] for p in oracle_plan(row).paths}
        assert oracle_answer_from_texts(row, texts) == row.reference_answer, row.id


def _paged(text: str, path: str, budget: int = 2500) -> str:
    """The text as consecutive read() outputs pasted together, as the read tool cuts them."""
    parts, start = [], 0
    while start < len(text):
        end = min(len(text), start + budget)
        if end < len(text):
            end = text.rfind("\n", start + budget * 3 // 4, end) + 1 or end
        part = text[start:end]
        if end < len(text):
            part += (
                f"\n[Showing characters {start}-{end} of {len(text)}. "
                f"To continue, call read(path={path!r}, offset={end}).]"
            )
        parts.append(part)
        start = end
    return "".join(parts)


def test_oracle_reads_paged_text_and_refuses_missing_documents(built: Built) -> None:
    rows = [r for r in built.val if r.metadata.task_type in ("aggregate", "comparison")][:10]
    for row in rows:
        texts = {p: _paged(built.texts[p], p) for p in oracle_plan(row).paths}
        assert all(strip_paging(texts[p]) == built.texts[p] for p in texts)
        assert oracle_answer_from_texts(row, texts) == row.reference_answer
    with pytest.raises(OracleError, match="was not read"):
        oracle_answer_from_texts(rows[0], {})
    with pytest.raises(OracleError, match="no table states"):
        oracle_answer_from_texts(rows[0], dict.fromkeys(texts_of(rows[0]), "no tables here"))


def texts_of(row: Row) -> list[str]:
    return oracle_plan(row).paths


# -- rows and validation -----------------------------------------------------------------------


def _row(i: int, prompt: str | None = None, evidence: str = "filings/x.html") -> Row:
    return Row(
        id=f"r-{i}",
        prompt=prompt or f"question {i}?",
        reference_answer="1.0",
        expected=Expected(tolerance_rel=0.01, evidence_path=evidence, must_use_tools=["read"]),
        metadata=RowMetadata(task_type="lookup", difficulty="easy"),
    )


def test_rows_round_trip(tmp_path: Path) -> None:
    spans = Row.model_validate(
        {
            "id": "s-1",
            "prompt": "Which segments?",
            "reference_answer": ["Motion Control", "Fluid Systems"],
            "grader": "spans",
            "tools": [{"type": "function", "function": {"name": "read", "parameters": {}}}],
            "metadata": {"task_type": "multi-span", "difficulty": "medium", "slice": "x"},
        }
    )
    path = tmp_path / "rows.jsonl"
    assert write_rows(path, [_row(1), spans]) == 2
    back = load_rows(path)
    assert back == [_row(1), spans]
    assert back[1].metadata.extra("slice") == "x" and back[1].answers() == spans.answers()


def test_load_rows_reports_every_bad_line(tmp_path: Path) -> None:
    good = _row(1).model_dump_json()
    no_prompt = json.loads(good) | {"id": "r-2"}
    del no_prompt["prompt"]
    bad_difficulty = json.loads(good) | {"id": "r-3"}
    bad_difficulty["metadata"]["difficulty"] = "extreme"
    lines = [
        good,
        '{"id": "broken", ',
        "",
        json.dumps(no_prompt),
        json.dumps(bad_difficulty),
        "[1, 2]",
        json.dumps(json.loads(good) | {"surprise": 1, "id": "r-4"}),
        json.dumps(json.loads(good) | {"tools": [{"name": "read"}], "id": "r-5"}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_rows(path)
    problems = err.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (2, 4, 5, 6, 7, 8)]
    text = "\n".join(problems)
    assert "invalid JSON" in text and "prompt" in text and "difficulty" in text
    assert "surprise" in text and "function spec" in text


def test_validate_finds_duplicates_overlap_and_missing_evidence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "filings").mkdir(parents=True)
    (corpus / "filings" / "x.html").write_text("<p>x</p>", encoding="utf-8")
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    write_rows(train, [_row(1), _row(2), _row(3, prompt="question 1?")])
    write_rows(
        val,
        [
            _row(2, prompt="other?"),
            _row(4, prompt="Question  2?"),
            _row(5, evidence="filings/nope.html"),
            _row(6, evidence="../escape.html"),
        ],
    )
    report = validate_files([train, val], corpus)
    text = "\n".join(report.problems)
    assert f"{train}:3: duplicate prompt (first at line 1)" in text
    assert f"{val}:1: duplicate id 'r-2' (first {train}:2)" in text
    assert f"{val}:2: prompt also in {train}:2" in text
    assert f"{val}:3: evidence path 'filings/nope.html' does not exist" in text
    assert f"{val}:4: evidence path '../escape.html'" in text
    assert report.counts[str(val)].rows == 4
    assert validate_command([train, val], corpus) == 1
    out = capsys.readouterr().out
    assert "problem(s)" in out and "easy" in out and "lookup" in out
    write_rows(val, [_row(7, prompt="fresh?")])
    assert validate_command([val], corpus) == 0


# -- TAT-QA ------------------------------------------------------------------------------------

needs_tatqa = pytest.mark.skipif(
    not TATQA_DEV.is_file(), reason=f"TAT-QA dev split not found at {TATQA_DEV}"
)


@pytest.fixture(scope="module")
def tatqa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Row], list[Row]]:
    if not TATQA_DEV.is_file():
        pytest.skip(f"TAT-QA dev split not found at {TATQA_DEV}")
    out = tmp_path_factory.mktemp("tatqa")
    summary = import_tatqa(TATQA_DEV, out)
    assert summary.documents == 278
    val = load_rows(out / "val.jsonl")
    rows = load_rows(out / "train.jsonl") + val
    return out, {str(r.metadata.extra("question_uid")): r for r in rows}, val


KNOWN_ANSWERS = {
    "eb787966-fa02-401f-bfaf-ccabf3828b23": ("-12.6 million", "numeric"),  # arithmetic
    "05b670d3-5b19-438c-873f-9bf6de29c69e": ("-22.22%", "numeric"),
    "64c902c6-f426-4432-84b3-c10b3065716f": ("-16458 thousand", "numeric"),
    "b3fbeb07-4352-47db-b329-a627bc17e1e1": ("24 billion", "numeric"),
    "f49252e2-158b-4a79-ac56-d21ea67082a8": ("-10029.67 thousand", "numeric"),
    "8f61e8be-18ee-4226-bb65-e1d1b4dfa8ec": ("4", "numeric"),  # count
    "4960801d-277d-4f79-8eca-c4d0200fa9d6": ("$1,496.5 million", "numeric"),  # span + scale
    "4db3c092-5b29-4715-baa8-f923802df170": ("-$9.8 million", "numeric"),  # "$(9.8) million"
    "4ec6ff4d-d8ef-4cdd-aeab-df75b41f5c01": ("13.2%", "numeric"),
    "6cdd6fc8-6173-4515-a307-ee067f99ff2b": ("-£8.1m", "numeric"),
    "f4142349-eb72-49eb-9a76-f3ccb1010cbc": ("2019", "numeric"),
}


@needs_tatqa
def test_tatqa_answers_keep_scale_and_sign(tatqa: tuple[Path, dict[str, Row], list[Row]]) -> None:
    _, by_uid, _ = tatqa
    for uid, (answer, grader) in KNOWN_ANSWERS.items():
        assert (by_uid[uid].reference_answer, by_uid[uid].grader) == (answer, grader), uid
    multi = by_uid["016bb970-bbb3-43a1-a56b-898eb9e63ee5"]
    assert multi.reference_answer == ["-5,062 thousand", "-6,533 thousand", "-18,494 thousand"]
    assert (multi.grader, multi.metadata.difficulty) == ("spans", "medium")
    text = by_uid["23801627-ff77-4597-8d24-1c99e2452082"]
    assert text.grader == "string" and str(text.reference_answer).startswith("our allowable")
    assert by_uid["eb787966-fa02-401f-bfaf-ccabf3828b23"].metadata.difficulty == "hard"


@needs_tatqa
def test_tatqa_documents_and_splits(tatqa: tuple[Path, dict[str, Row], list[Row]]) -> None:
    out, by_uid, val = tatqa
    rows = list(by_uid.values())
    assert len(rows) >= 1660  # 1,668 questions less the ones asked twice in one context
    val_docs = {r.expected.evidence_path for r in val}
    train_docs = {r.expected.evidence_path for r in rows} - val_docs
    assert val_docs and train_docs
    assert not {r.expected.evidence_path for r in rows if r not in val} & val_docs
    assert 0.10 <= len(val) / len(rows) <= 0.20
    row = by_uid["eb787966-fa02-401f-bfaf-ccabf3828b23"]
    path = str(row.expected.evidence_path)
    assert path == "reports/tatqa-3ffd9053.html" and path in row.prompt
    text = Corpus(out / "corpus").text(path)
    assert re.search(r"Other\s+\|\s+44\.1\s+\|\s+56\.7", text)
    assert text.index("Total sales") < text.index("Sales by Contract Type")
    report = validate_files([out / "train.jsonl", out / "val.jsonl"], out / "corpus")
    assert report.ok, report.render()


def test_tatqa_command_fails_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}', encoding="utf-8")
    # Raised for the CLI to print as one line with exit status 2 (tests/test_cli.py).
    with pytest.raises(DatasetError, match="expected a JSON list of contexts"):
        import_tatqa_command(bad, tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        import_tatqa_command(tmp_path / "absent.json", tmp_path / "out")
