"""Import TAT-QA (table + text QA over real annual-report excerpts) as a corpus and dataset.

Decision: the prompt names the document. TAT-QA contexts carry no company name (questions say
"the company"), so search alone cannot tell which of hundreds of near-identical report excerpts
a question is about. Each prompt therefore reads
``"Answer from the report excerpt at reports/tatqa-<uid8>.html: <question>"``; the agent still
has to read (and page through) the document and find the figure, and may search within it.
``must_use_tools`` is ``["read"]`` accordingly.

Each context becomes ``corpus/reports/tatqa-<first 8 chars of the table uid>.html``: a heading,
the table (leading rows whose first cell is blank form the header, which the tool server
renders as aligned columns under a rule), then the paragraphs in their ``order``. The table
comes first so it is on the first page a ``read`` returns.

Reference answers keep scale and sign: arithmetic ``-12.6`` with scale ``million`` becomes
``"-12.6 million"``, percent becomes ``"-22.22%"``; numeric spans in accounting brackets
``"(5,062)"`` become ``"-5,062 thousand"``; text spans keep their text; multi-span answers are
lists. The split is by context (hash of the table uid), so no report serves both splits.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from envs.data.report import SplitCounts, count_rows, render_counts
from envs.data.rows import (
    DatasetError,
    Difficulty,
    Expected,
    GraderHint,
    Row,
    RowMetadata,
    write_rows,
)

__all__ = ["ImportSummary", "format_answer", "import_tatqa", "import_tatqa_command"]

AnswerType = Literal["span", "multi-span", "arithmetic", "count"]
_DIFFICULTY: dict[str, Difficulty] = {
    "span": "easy",
    "multi-span": "medium",
    "count": "medium",
    "arithmetic": "hard",
}
_NUMERIC_SPAN = re.compile(
    r"^(?P<neg>[-−])?(?P<cur>[$£€]?)\s?(?P<open>\()?(?P<num>\d[\d,]*(?:\.\d+)?|\.\d+)"
    r"(?P<inner>\s?(?:million|billion|thousand|m|bn|k))?(?P<close>\))?(?P<pct>%)?"
    r"(?P<outer>\s(?:million|billion|thousand))?$",
    re.IGNORECASE,
)


class _Question(BaseModel):
    model_config = ConfigDict(extra="ignore")

    uid: str
    order: int = 0
    question: str
    answer: int | float | str | list[str]
    derivation: str = ""
    answer_type: AnswerType
    answer_from: str = ""
    req_comparison: bool = False
    scale: str = ""


class _Paragraph(BaseModel):
    model_config = ConfigDict(extra="ignore")

    order: int = 0
    text: str


class _Table(BaseModel):
    model_config = ConfigDict(extra="ignore")

    uid: str
    table: list[list[str]]


class _Context(BaseModel):
    model_config = ConfigDict(extra="ignore")

    table: _Table
    paragraphs: list[_Paragraph] = Field(default_factory=list)
    questions: list[_Question] = Field(default_factory=list)


class ImportSummary(BaseModel):
    json_path: str
    out_dir: str
    corpus_dir: str
    documents: int = 0
    skipped: list[str] = Field(default_factory=list)  # question uids left out, with why
    files: dict[str, str] = Field(default_factory=dict)
    counts: dict[str, SplitCounts] = Field(default_factory=dict)

    def render(self) -> str:
        head = (
            f"TAT-QA {self.json_path} -> {self.out_dir}: {self.documents} documents in "
            f"{self.corpus_dir}, {len(self.skipped)} question(s) skipped"
        )
        return f"{head}\n{render_counts(self.counts)}"


def _plain(x: int | float) -> str:
    """A number without exponent or trailing zeros: ``-12.60 -> "-12.6"``, ``152 -> "152"``."""
    d = Decimal(repr(x)).normalize()
    text = format(d, "f")
    return "0" if text in ("-0", "0") else text


def _with_scale(number: str, scale: str) -> str:
    if scale == "percent":
        return f"{number}%"
    return f"{number} {scale}" if scale else number


def _span(text: str, scale: str) -> tuple[str, bool]:
    """A span's answer text and whether it is a number (sign normalised, scale added)."""
    text = " ".join(text.split())
    m = _NUMERIC_SPAN.match(text)
    if not m or bool(m["open"]) != bool(m["close"]):
        return text, False
    sign = "-" if (m["neg"] or m["open"]) else ""
    number = f"{sign}{m['cur']}{m['num']}{m['inner'] or ''}{m['pct'] or ''}{m['outer'] or ''}"
    explicit = m["inner"] or m["pct"] or m["outer"]
    return (number if explicit else _with_scale(number, scale)), True


def format_answer(q: _Question) -> tuple[str | list[str], GraderHint]:
    """Reference answer (scale and sign kept) and the grader hint for one question."""
    a = q.answer
    if q.answer_type in ("arithmetic", "count"):
        if isinstance(a, list):
            a = a[0]
        number = _plain(a) if isinstance(a, int | float) else _plain(float(a))
        return _with_scale(number, q.scale), "numeric"
    spans = [a] if isinstance(a, str) else a if isinstance(a, list) else [_plain(a)]
    parsed = [_span(s, q.scale) for s in spans if s.strip()]
    if q.answer_type == "multi-span" or len(parsed) > 1:
        return [t for t, _ in parsed], "spans"
    text, numeric = parsed[0]
    return text, "numeric" if numeric else "string"


def _tolerance(q: _Question, grader: GraderHint) -> float | None:
    if q.answer_type == "count":
        return 0.0
    if q.answer_type == "arithmetic" and isinstance(q.answer, int | float) and q.answer:
        # Answers are rounded to two decimals; near zero that rounding is a large share.
        return round(min(0.05, max(0.01, 0.006 / abs(float(q.answer)))), 3)
    return 0.001 if grader == "numeric" else None


def _header_rows(rows: list[list[str]]) -> int:
    n = 0
    while n < len(rows) - 1 and not rows[n][0].strip():
        n += 1
    return max(n, 1) if len(rows) > 1 else 0


def render_document(ctx: _Context, name: str) -> str:
    """The context as an HTML page: table first, then paragraphs in order."""
    rows = ctx.table.table
    n_head = _header_rows(rows)

    def tr(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>\n"

    head = "".join(tr(r, "th") for r in rows[:n_head])
    body = "".join(tr(r, "td") for r in rows[n_head:])
    paragraphs = "".join(
        f"<p>{html.escape(p.text)}</p>\n" for p in sorted(ctx.paragraphs, key=lambda p: p.order)
    )
    title = html.escape(f"Report excerpt {name}")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{title}</title>'
        f"</head>\n<body>\n<h1>{title}</h1>\n<p>An excerpt of a company's annual report: one "
        "table and the text around it.</p>\n<h2>Table</h2>\n"
        f"<table>\n<thead>{head}</thead>\n<tbody>\n{body}</tbody>\n</table>\n"
        f"<h2>Text</h2>\n{paragraphs}</body>\n</html>\n"
    )


def _doc_names(contexts: list[_Context]) -> list[str]:
    """``tatqa-<uid prefix>``, 8 characters unless that would collide."""
    uids = [c.table.uid for c in contexts]
    if len(set(uids)) != len(uids):
        raise DatasetError(["table uids are not unique; cannot name one document per context"])
    width = 8
    while len({u[:width] for u in uids}) != len(uids):
        width += 1
    return [f"tatqa-{u[:width]}" for u in uids]


def _row(ctx: _Context, q: _Question, path: str) -> Row:
    answer, grader = format_answer(q)
    metadata = RowMetadata.model_validate(
        {
            "task_type": q.answer_type,
            "difficulty": _DIFFICULTY[q.answer_type],
            "source": "tatqa",
            "question_uid": q.uid,
            "table_uid": ctx.table.uid,
            "answer_from": q.answer_from,
            "scale": q.scale,
            "derivation": q.derivation,
            "req_comparison": q.req_comparison,
        }
    )
    return Row(
        id=f"tatqa-{q.uid}",
        prompt=f"Answer from the report excerpt at {path}: {' '.join(q.question.split())}",
        reference_answer=answer,
        expected=Expected(
            tolerance_rel=_tolerance(q, grader), evidence_path=path, must_use_tools=["read"]
        ),
        metadata=metadata,
        grader=grader,
    )


def _rows(ctx: _Context, path: str, skipped: list[str]) -> list[Row]:
    """One row per question. A question asked twice of one context keeps one row when the
    answers agree and none when they differ (the dataset cannot say which is right)."""
    by_prompt: dict[str, list[Row]] = {}
    for q in sorted(ctx.questions, key=lambda q: q.order):
        try:
            row = _row(ctx, q, path)
        except (ValidationError, ValueError, IndexError) as exc:
            skipped.append(f"{q.uid}: {str(exc).splitlines()[0]}")
            continue
        by_prompt.setdefault(row.prompt, []).append(row)
    rows: list[Row] = []
    for same in by_prompt.values():
        answers = {json.dumps(r.reference_answer) for r in same}
        keep = same[:1] if len(answers) == 1 else []
        rows += keep
        for r in same[len(keep) :]:
            why = "duplicate" if keep else "asked twice with different answers"
            skipped.append(f"{r.metadata.extra('question_uid')}: {why} in {path}")
    return rows


def _val_contexts(uids: list[str], seed: int, val_fraction: float) -> set[str]:
    ranked = sorted(uids, key=lambda u: hashlib.sha256(f"{seed}:{u}".encode()).hexdigest())
    n_val = round(len(uids) * val_fraction)
    n_val = min(max(n_val, 1), len(uids) - 1) if len(uids) > 1 else 0
    return set(ranked[:n_val])


def _load_contexts(json_path: Path) -> list[_Context]:
    try:
        data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DatasetError([f"{json_path}: not a UTF-8 text file"]) from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DatasetError([f"{json_path}: not valid JSON: {exc.msg} ({where})"]) from None
    if not isinstance(data, list):
        raise DatasetError([f"{json_path}: expected a JSON list of contexts"])
    contexts, problems = [], []
    for i, item in enumerate(data):
        try:
            contexts.append(_Context.model_validate(item))
        except ValidationError as exc:
            problems.append(f"{json_path}: context {i}: {str(exc).splitlines()[0]}")
    if problems:
        raise DatasetError(problems)
    return contexts


def _write_readme(corpus: Path, source: Path, documents: int) -> None:
    (corpus / "README.txt").write_text(
        f"Report excerpts imported from TAT-QA ({source.name}; Zhu et al., ACL 2021; MIT "
        f"license).\n\n{documents} documents: reports/tatqa-<table uid prefix>.html, each one "
        "table followed by the paragraphs around it. Contexts carry no company name.\n",
        encoding="utf-8",
    )


def import_tatqa(
    json_path: Path, out_dir: Path, seed: int = 0, val_fraction: float = 0.15
) -> ImportSummary:
    """Write ``out_dir/corpus/reports/*.html`` and ``out_dir/{train,val}.jsonl``."""
    contexts = _load_contexts(Path(json_path))
    corpus = Path(out_dir) / "corpus"
    (corpus / "reports").mkdir(parents=True, exist_ok=True)
    summary = ImportSummary(json_path=str(json_path), out_dir=str(out_dir), corpus_dir=str(corpus))
    val_uids = _val_contexts([c.table.uid for c in contexts], seed, val_fraction)
    splits: dict[str, list[Row]] = {"train": [], "val": []}
    for ctx, name in zip(contexts, _doc_names(contexts), strict=True):
        path = f"reports/{name}.html"
        (corpus / path).write_text(render_document(ctx, name), encoding="utf-8", newline="\n")
        split = "val" if ctx.table.uid in val_uids else "train"
        splits[split] += _rows(ctx, path, summary.skipped)
    summary.documents = len(contexts)
    _write_readme(corpus, Path(json_path), len(contexts))
    for split, rows in splits.items():
        target = Path(out_dir) / f"{split}.jsonl"
        write_rows(target, rows)
        summary.files[split] = str(target)
        summary.counts[split] = count_rows(rows)
    summary.counts["total"] = count_rows(splits["train"] + splits["val"])
    return summary


def import_tatqa_command(json_path: Path, out_dir: Path) -> int:
    """CLI verb: import, print counts per split. A file that cannot be imported raises
    DatasetError or OSError, which the CLI prints as one line (exit status 2)."""
    summary = import_tatqa(json_path, out_dir)
    print(summary.render())
    for line in summary.skipped:
        print(f"skipped {line}")
    return 0
