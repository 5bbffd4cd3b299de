"""A scripted oracle for synthetic filings rows: answers from the documents' text alone.

`oracle_answer_from_texts` reads each stated figure a row's recipe names out of the rendered
text of its document (the ``read`` tool's output), then computes the answer with the same
`compute` the builder used. If every val row round-trips, every val row is answerable from the
corpus, with no peeking at facts.jsonl.

Figures are taken from the documents' tables, which the tool server renders as
``label | col | col`` lines under a ``---+---`` rule. A figure is looked up by row label and
column header; when several tables state it (a 10-K's quarterly table repeats the quarters) all
must agree. The paging notes the ``read`` tool appends (``\n[Showing characters a-b of n. To
continue, call read(path=..., offset=b).]``) are removed first (`strip_paging`), so the parts
of a long document pasted together in order give back exactly the whole text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal

from envs.data.facts import parse_figure
from envs.data.metrics import METRICS, column_header, period_end
from envs.data.recipe import FactRef, Recipe, compute
from envs.data.rows import Row

__all__ = [
    "OracleError",
    "OraclePlan",
    "find_figure",
    "next_read_offset",
    "oracle_answer_from_texts",
    "oracle_plan",
    "strip_paging",
]

_RULE = re.compile(r"^-+(-\+-+)+$")
_PAGING_NOTE = re.compile(r"\n?\[Showing characters \d+-\d+ of \d+\. [^\n]*?offset=(\d+)\)\.\]")


class OracleError(ValueError):
    """The documents do not state what the recipe needs (or state it inconsistently)."""


@dataclass(frozen=True)
class OraclePlan:
    """What a scripted policy should do: search these queries, read these documents."""

    queries: list[str]
    paths: list[str]


def recipe_of(row: Row) -> Recipe:
    raw = row.metadata.extra("recipe")
    if raw is None:
        raise OracleError(f"row {row.id} has no metadata.recipe (not a synthetic filings row)")
    return Recipe.model_validate(raw)


def search_query(fact: FactRef) -> str:
    """Company, metric and period in the question's own words, e.g. ``Apex Materials revenue
    three months ended March 31, 2024`` (the period's end date also names the filing)."""
    info = METRICS[fact.metric]
    return f"{fact.company} {info.phrase} {period_end(fact.period, info.kind)}"


def oracle_plan(row: Row) -> OraclePlan:
    """Search queries (company, metric, period) and the evidence documents to read."""
    recipe = recipe_of(row)
    queries = [search_query(f) for f in recipe.facts]
    paths = [f.path for f in recipe.facts]
    return OraclePlan(list(dict.fromkeys(queries)), list(dict.fromkeys(paths)))


def strip_paging(text: str) -> str:
    """Concatenated ``read`` outputs without their paging notes: the document's own text."""
    return _PAGING_NOTE.sub("", text)


def next_read_offset(part: str) -> int | None:
    """The offset a ``read`` output's paging note says to continue from; None at the end."""
    notes = _PAGING_NOTE.findall(part)
    return int(notes[-1]) if notes else None


def _tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(header cells, body rows) of every rendered table in ``text``."""
    lines = strip_paging(text).splitlines()
    for i, line in enumerate(lines):
        if i == 0 or not _RULE.match(line.strip()):
            continue
        header = [c.strip() for c in lines[i - 1].split(" | ")]
        body: list[list[str]] = []
        for row in lines[i + 1 :]:
            if " | " not in row:
                break
            body.append([c.strip() for c in row.split(" | ")])
        yield header, body


def find_figure(text: str, metric: str, period: str) -> Decimal:
    """The figure a document's tables state for ``metric`` in ``period``'s column."""
    info = METRICS.get(metric)
    if info is None:
        raise OracleError(f"unknown metric {metric!r}")
    column = column_header(period, info.kind)
    found: set[Decimal] = set()
    for header, body in _tables(text):
        if column not in header:
            continue
        at = header.index(column)
        for cells in body:
            if cells[0] in info.labels and at < len(cells):
                try:
                    found.add(parse_figure(cells[at]))
                except ValueError as exc:
                    raise OracleError(f"{cells[0]} / {column}: {exc}") from exc
    if not found:
        raise OracleError(f"no table states {metric} for {column}")
    if len(found) > 1:
        raise OracleError(f"tables disagree on {metric} for {column}: {sorted(found)}")
    return found.pop()


def _figure(ref: FactRef, texts: Mapping[str, str]) -> Decimal:
    if ref.path not in texts:
        raise OracleError(f"document {ref.path} was not read")
    try:
        return find_figure(texts[ref.path], ref.metric, ref.period)
    except OracleError as exc:
        raise OracleError(f"{ref.path}: {exc}") from exc


def oracle_answer_from_texts(row: Row, texts: Mapping[str, str]) -> str:
    """The row's answer computed only from the given documents' text (path -> text)."""
    recipe = recipe_of(row)
    values = [_figure(ref, texts) for ref in recipe.facts]
    return compute(recipe, values).text
