"""What the synthetic filings call each metric, and how to say and find each period.

The builder words prompts with these phrases; the oracle finds figures in a document's text
by the table row labels and column headers listed here (they are what the filings print).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["METRICS", "MetricInfo", "Period", "column_header", "parse_period", "period_phrase"]

Kind = Literal["flow", "balance"]  # flows cover a period; balances are as of its last day
_ORDINALS = ("first", "second", "third", "fourth")
_MONTH_END = ("March 31", "June 30", "September 30", "December 31")


@dataclass(frozen=True)
class MetricInfo:
    phrase: str  # as the subject of a question: "What was X's {phrase} ...?"
    labels: tuple[str, ...]  # row labels that state it in the documents' tables
    kind: Kind = "flow"


METRICS: dict[str, MetricInfo] = {
    "revenue": MetricInfo("revenue", ("Revenue",)),
    "cost_of_revenue": MetricInfo("cost of revenue", ("Cost of revenue",)),
    "gross_profit": MetricInfo("gross profit", ("Gross profit",)),
    "research_and_development": MetricInfo(
        "research and development expense", ("Research and development",)
    ),
    "selling_general_administrative": MetricInfo(
        "selling, general and administrative expense", ("Selling, general and administrative",)
    ),
    "operating_expenses": MetricInfo("total operating expenses", ("Total operating expenses",)),
    "operating_income": MetricInfo("operating income", ("Operating income",)),
    "interest_expense": MetricInfo("interest expense", ("Interest expense",)),
    "pretax_income": MetricInfo("income before income taxes", ("Income before income taxes",)),
    "income_tax": MetricInfo("income tax expense", ("Income tax expense",)),
    "net_income": MetricInfo("net income", ("Net income",)),
    "eps_diluted": MetricInfo(
        "diluted earnings per share", ("Diluted earnings per share (USD)", "Diluted EPS (USD)")
    ),
    "diluted_shares": MetricInfo(
        "diluted weighted-average share count", ("Diluted weighted-average shares (millions)",)
    ),
    "gross_margin": MetricInfo("gross margin", ("Gross margin",)),
    "operating_margin": MetricInfo("operating margin", ("Operating margin",)),
    "net_margin": MetricInfo("net margin", ("Net margin",)),
    "cash": MetricInfo("cash and cash equivalents", ("Cash and cash equivalents",), "balance"),
    "accounts_receivable": MetricInfo(
        "net accounts receivable", ("Accounts receivable, net",), "balance"
    ),
    "inventory": MetricInfo("inventories", ("Inventories",), "balance"),
    "total_current_assets": MetricInfo(
        "total current assets", ("Total current assets",), "balance"
    ),
    "ppe_net": MetricInfo(
        "net property, plant and equipment", ("Property, plant and equipment, net",), "balance"
    ),
    "total_assets": MetricInfo("total assets", ("Total assets",), "balance"),
    "total_current_liabilities": MetricInfo(
        "total current liabilities", ("Total current liabilities",), "balance"
    ),
    "long_term_debt": MetricInfo("long-term debt", ("Long-term debt",), "balance"),
    "total_liabilities": MetricInfo("total liabilities", ("Total liabilities",), "balance"),
    "shareholders_equity": MetricInfo("shareholders' equity", ("Shareholders' equity",), "balance"),
}

_PERIOD = re.compile(r"^(?:FY(?P<fy>\d{4})|(?P<year>\d{4})-Q(?P<q>[1-4]))$")


@dataclass(frozen=True)
class Period:
    year: int
    quarter: int | None  # None: the fiscal year

    @property
    def label(self) -> str:
        return f"FY{self.year}" if self.quarter is None else f"{self.year}-Q{self.quarter}"

    def prior_year(self) -> Period:
        return Period(self.year - 1, self.quarter)


def parse_period(label: str) -> Period:
    """``"2025-Q3"`` or ``"FY2025"`` as a `Period`."""
    m = _PERIOD.match(label)
    if not m:
        raise ValueError(f"not a period label: {label!r} (expected e.g. 2025-Q3 or FY2025)")
    if m["fy"]:
        return Period(int(m["fy"]), None)
    return Period(int(m["year"]), int(m["q"]))


def _end(p: Period) -> str:
    return f"{_MONTH_END[(p.quarter or 4) - 1]}, {p.year}"


def period_phrase(label: str, kind: Kind) -> str:
    """Unambiguous wording: the quarter or fiscal year and its end date."""
    p, end = parse_period(label), period_end(label, kind)
    if kind == "balance":
        return end
    if p.quarter is None:
        return f"in fiscal year {p.year} (the {end})"
    return f"in the {_ORDINALS[p.quarter - 1]} quarter of fiscal {p.year} (the {end})"


def period_end(label: str, kind: Kind) -> str:
    """The period by its end date, as questions word it: ``three months ended June 30, 2024``,
    ``year ended December 31, 2024``, ``as of June 30, 2024``."""
    p = parse_period(label)
    if kind == "balance":
        return f"as of {_end(p)}"
    return f"{'three months' if p.quarter else 'year'} ended {_end(p)}"


def short_period(label: str) -> str:
    """Compact wording for enumerations: ``"Q3 2025"``, ``"fiscal 2025"``."""
    p = parse_period(label)
    return f"fiscal {p.year}" if p.quarter is None else f"Q{p.quarter} {p.year}"


def column_header(label: str, kind: Kind) -> str:
    """The table column that holds a period's figure: ``"Q3 2025"``, ``"Sep 30, 2025"``."""
    p = parse_period(label)
    if kind == "balance":
        month_day = _MONTH_END[(p.quarter or 4) - 1]
        return f"{month_day[:3]}{month_day[-3:]}, {p.year}"
    return f"FY{p.year}" if p.quarter is None else f"Q{p.quarter} {p.year}"
