"""Reader for a synthetic corpus's ``facts.jsonl``.

The file format is the contract with the generator (envs must not import toolservers), so this
is a private model of one line. Unknown extra keys are ignored: the generator may add fields.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from envs.data.rows import DatasetError, Problem

__all__ = ["FactKey", "FactLine", "FactTable", "load_fact_lines", "parse_figure"]

Unit = Literal["usd_millions", "percent", "usd_per_share", "shares_millions"]
FactKey = tuple[str, str, str]  # (company, period, metric)

_FIGURE = re.compile(r"^[-−]?\d{1,3}(,\d{3})*(\.\d+)?%?$|^[-−]?\d+(\.\d+)?%?$")


def parse_figure(shown: str) -> Decimal:
    """A figure as a document prints it (``"1,843.3"``, ``"-1.5%"``) as an exact Decimal."""
    text = shown.strip()
    if not _FIGURE.match(text):
        raise ValueError(f"not a figure: {shown!r}")
    try:
        return Decimal(text.replace(",", "").replace("−", "-").rstrip("%"))
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise ValueError(f"not a figure: {shown!r}") from exc


def decimals_of(shown: str) -> int:
    """Decimal places a figure is printed with (``"0.37"`` -> 2)."""
    text = shown.rstrip("%")
    return len(text.split(".", 1)[1]) if "." in text else 0


class FactLine(BaseModel):
    """One line of facts.jsonl: a current-period figure exactly as its document shows it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    company: str
    company_slug: str
    ticker: str
    form: Literal["10-Q", "10-K"]
    fiscal_year: int
    period: str  # "2025-Q3" or "FY2025"
    metric: str
    value: float
    unit: Unit
    path: str
    display: str

    @cached_property
    def figure(self) -> Decimal:
        return parse_figure(self.display)

    @property
    def decimals(self) -> int:
        return decimals_of(self.display)


class FactTable:
    """Facts addressed by (company, period, metric), companies in file order."""

    def __init__(self, facts: list[FactLine]) -> None:
        self.facts = facts
        self.by_key: dict[FactKey, FactLine] = {(f.company, f.period, f.metric): f for f in facts}
        self.companies: list[str] = list(dict.fromkeys(f.company for f in facts))
        self.periods: list[str] = sorted({f.period for f in facts})

    def get(self, company: str, period: str, metric: str) -> FactLine | None:
        return self.by_key.get((company, period, metric))


def load_fact_lines(path: Path) -> list[FactLine]:
    """Read facts.jsonl; every bad line is reported in one `DatasetError`."""
    facts: list[FactLine] = []
    problems: list[Problem] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError([f"{path}: not a UTF-8 text file"]) from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fact = FactLine.model_validate_json(line)
            fact.figure  # noqa: B018 - an unparseable display is a bad line, found now
        except (ValidationError, ValueError) as exc:
            problems.append(Problem(str(path), number, str(exc).splitlines()[0]))
            continue
        facts.append(fact)
    if problems:
        raise DatasetError(problems)
    return facts
