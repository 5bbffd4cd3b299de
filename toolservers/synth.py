"""Deterministic generator of a filing-like corpus (10-Ks and 10-Qs) for fictional companies.

Every figure is derived from integer tenths of a million USD, so the accounting identities
hold exactly in the documents, and ``facts.jsonl`` records each current-period figure exactly
as its document prints it. That file is the ground truth for building question/answer tasks.
"""

from __future__ import annotations

import html
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from toolservers.synth_companies import COMPANIES, Company
from toolservers.synth_model import (
    YEARS,
    CompanyData,
    Form,
    Income,
    Period,
    balance_prior,
    end_date,
    pct_of,
    simulate,
)
from toolservers.synth_text import (
    ACCOUNTING_ESTIMATES,
    BUSINESS,
    LIQ_CLOSE,
    LIQUIDITY,
    OVERVIEW,
    RISKS,
    TEN_K_CLOSING,
    doc_fields,
    eps,
    money,
    para,
    pct,
    results_prose,
    say,
    segment_prose,
)

__all__ = [
    "COMPANIES",
    "YEARS",
    "Company",
    "CorpusSummary",
    "Fact",
    "eps",
    "filing_path",
    "load_facts",
    "money",
    "pct",
    "synthesize_corpus",
]


Unit = Literal["percent", "usd_millions", "usd_per_share", "shares_millions"]


class Fact(BaseModel):
    """One figure as stated in the current-period column of one document."""

    model_config = ConfigDict(frozen=True)

    company: str
    company_slug: str
    ticker: str
    form: Form
    fiscal_year: int
    period: str  # "2025-Q3" for a 10-Q, "FY2025" for a 10-K
    metric: str
    value: float
    unit: Unit
    path: str  # relative to the corpus root, e.g. "filings/<slug>-10q-2025-q3.html"
    display: str  # the literal string the document shows, e.g. "1,234.5", "13.4%", "-0.12"


@dataclass(frozen=True)
class CorpusSummary:
    companies: int
    documents: int
    facts: int


def filing_path(slug: str, form: Form, fiscal_year: int, quarter: int | None = None) -> str:
    """Corpus-relative path of a filing, e.g. ``filings/apex-materials-10q-2025-q3.html``."""
    if form == "10-K":
        return f"filings/{slug}-10k-{fiscal_year}.html"
    return f"filings/{slug}-10q-{fiscal_year}-q{quarter}.html"


# -- tables --------------------------------------------------------------------------------
# (row label, fact metric or None, attribute); shared by the tables and the facts so that a
# fact can never disagree with the column that states it.
_INCOME_ROWS = (
    ("Revenue", "revenue", "revenue"),
    ("Cost of revenue", "cost_of_revenue", "cost"),
    ("Gross profit", "gross_profit", "gross"),
    ("Research and development", "research_and_development", "rd"),
    ("Selling, general and administrative", "selling_general_administrative", "sga"),
    ("Total operating expenses", "operating_expenses", "opex"),
    ("Operating income", "operating_income", "operating"),
    ("Interest expense", "interest_expense", "interest"),
    ("Income before income taxes", "pretax_income", "pretax"),
    ("Income tax expense", "income_tax", "tax"),
    ("Net income", "net_income", "net"),
)
_BALANCE_ROWS = (
    ("Cash and cash equivalents", "cash", "cash"),
    ("Accounts receivable, net", "accounts_receivable", "receivables"),
    ("Inventories", "inventory", "inventory"),
    ("Other current assets", None, "other_current"),
    ("Total current assets", "total_current_assets", "current_assets"),
    ("Property, plant and equipment, net", "ppe_net", "ppe"),
    ("Goodwill and other long-term assets", None, "other_assets"),
    ("Total assets", "total_assets", "assets"),
    ("Total current liabilities", "total_current_liabilities", "current_liabilities"),
    ("Long-term debt", "long_term_debt", "debt"),
    ("Other long-term liabilities", None, "other_liabilities"),
    ("Total liabilities", "total_liabilities", "liabilities"),
    ("Shareholders' equity", "shareholders_equity", "equity"),
    ("Total liabilities and shareholders' equity", None, "assets"),
)


def _ratios(inc: Income) -> list[tuple[str, str, float, Unit, str]]:
    gm, om, nm = (pct_of(x, inc.revenue) for x in (inc.gross, inc.operating, inc.net))
    return [
        ("Diluted earnings per share (USD)", "eps_diluted", inc.eps, "usd_per_share", eps(inc.eps)),
        (
            "Diluted weighted-average shares (millions)",
            "diluted_shares",
            inc.shares / 10,
            "shares_millions",
            money(inc.shares),
        ),
        ("Gross margin", "gross_margin", gm, "percent", pct(gm)),
        ("Operating margin", "operating_margin", om, "percent", pct(om)),
        ("Net margin", "net_margin", nm, "percent", pct(nm)),
    ]


def _table(caption: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in rows
    )
    return (
        f"<table>\n<caption>{html.escape(caption)}</caption>\n<thead><tr>{head}</tr></thead>\n"
        f"<tbody>\n{body}</tbody>\n</table>\n"
    )


def _statements(cd: CompanyData, period: Period) -> str:
    cur, prev = cd.income(period), cd.income(period.prior)
    rows = [[lab, money(getattr(cur, a)), money(getattr(prev, a))] for lab, _, a in _INCOME_ROWS]
    rows += [[c[0], c[4], p[4]] for c, p in zip(_ratios(cur), _ratios(prev), strict=True)]
    span = "three months ended " + end_date(period) if period.quarter else f"fiscal {period.year}"
    income = _table(
        f"Consolidated statements of operations, {span} and prior-year period "
        "(USD millions, except per-share amounts)",
        ["Line item", period.column, period.prior.column],
        rows,
    )
    bp = balance_prior(period)
    bal, prev_bal = cd.balance(period), cd.balance(bp)
    rows = [
        [lab, money(getattr(bal, a)), money(getattr(prev_bal, a))] for lab, _, a in _BALANCE_ROWS
    ]
    balance = _table(
        f"Consolidated balance sheets as of {end_date(period)} and {end_date(bp)} (USD millions)",
        ["Line item", end_date(period, short=True), end_date(bp, short=True)],
        rows,
    )
    return f"<h3>Statements of operations</h3>\n{income}<h3>Balance sheets</h3>\n{balance}"


def _segment_table(cd: CompanyData, period: Period) -> str:
    cur, prev = cd.segments(period), cd.segments(period.prior)
    rows = [
        [name, money(c), money(p), pct(pct_of(c - p, p)), pct(pct_of(c, sum(cur)))]
        for name, c, p in zip(cd.segment_names, cur, prev, strict=True)
    ]
    total, prev_total = sum(cur), sum(prev)
    change = pct(pct_of(total - prev_total, prev_total))
    rows.append(["Total", money(total), money(prev_total), change, "100.0%"])
    header = ["Segment", period.column, period.prior.column, "Change", f"Share {period.column}"]
    return _table("Revenue by segment (USD millions)", header, rows)


def _quarterly_table(cd: CompanyData, year: int) -> str:
    periods = [Period("10-Q", year, q) for q in (1, 2, 3, 4)] + [Period("10-K", year)]
    incs = [cd.income(p) for p in periods]
    rows = [
        [label, *(money(getattr(i, attr)) for i in incs)]
        for label, attr in (
            ("Revenue", "revenue"),
            ("Gross profit", "gross"),
            ("Operating income", "operating"),
            ("Net income", "net"),
        )
    ]
    rows.append(["Diluted EPS (USD)", *(eps(i.eps) for i in incs)])
    caption = (
        f"Quarterly results for fiscal {year}, unaudited (USD millions, except per-share "
        "amounts; quarterly EPS need not sum to the annual figure)"
    )
    return _table(caption, ["Line item", *(p.column for p in periods)], rows)


# -- documents -----------------------------------------------------------------------------


def _header(cd: CompanyData, period: Period) -> str:
    co = cd.company
    kind = (
        f"Annual report for the fiscal year ended {end_date(period)}"
        if period.quarter is None
        else f"Quarterly report for the quarter ended {end_date(period)}"
    )
    title = html.escape(f"{co.name} - Form {period.form} - {period.label}")
    meta = "<br>\n".join(
        html.escape(x)
        for x in (
            f"Ticker: {co.ticker}",
            f"Sector: {cd.profile.label}",
            f"Headquarters: {co.hq}",
            f"Period: {period.label} (fiscal year ends December 31)",
            "Units: USD millions, except per-share amounts (USD) and share counts (millions)",
        )
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{title}</title>'
        f"</head>\n<body>\n<h1>{html.escape(co.name)}</h1>\n"
        f"<p>Form {period.form}: {html.escape(kind)}</p>\n<p>{meta}</p>\n"
    )


def _mdna(rng: random.Random, cd: CompanyData, period: Period, f: dict[str, str]) -> str:
    up = cd.income(period).revenue >= cd.income(period.prior).revenue
    parts = [
        "<h3>Overview</h3>\n",
        para(say(rng, OVERVIEW, f)),
        "<h3>Results of operations</h3>\n",
        results_prose(rng, f, up),
        "<h3>Segment results</h3>\n",
        _segment_table(cd, period),
        segment_prose(rng, cd, period, f),
    ]
    if period.quarter is None:
        parts += ["<h3>Quarterly results</h3>\n", _quarterly_table(cd, period.year)]
    parts += [
        "<h3>Liquidity and capital resources</h3>\n",
        para(f"{say(rng, LIQUIDITY, f)} {rng.choice(LIQ_CLOSE)}"),
    ]
    if period.quarter is None:
        parts += ["<h3>Critical accounting estimates</h3>\n", para(ACCOUNTING_ESTIMATES)]
    return "".join(parts)


def _risk_section(rng: random.Random, count: int, f: dict[str, str]) -> str:
    return "".join(
        f"<h3>{html.escape(title)}</h3>\n" + para(body.format(**f))
        for title, body in rng.sample(RISKS, count)
    )


def _ten_q(rng: random.Random, cd: CompanyData, period: Period) -> str:
    f = doc_fields(cd, period)
    risks = [
        para(
            f"There have been no material changes to the risk factors disclosed in our annual "
            f"report on Form 10-K for fiscal {period.year - 1}"
            + (", except as described below." if rng.random() < 0.5 else ".")
        )
    ]
    if risks[0].endswith("below.</p>\n"):
        risks.append(_risk_section(rng, 1, f))
    return "".join(
        [
            _header(cd, period),
            "<h2>Part I, Item 1. Financial statements (unaudited)</h2>\n",
            _statements(cd, period),
            "<h2>Part I, Item 2. Management's discussion and analysis</h2>\n",
            _mdna(rng, cd, period, f),
            "<h2>Part II, Item 1A. Risk factors</h2>\n",
            *risks,
            "</body>\n</html>\n",
        ]
    )


def _ten_k(rng: random.Random, cd: CompanyData, period: Period) -> str:
    sites, owned = str(rng.randint(12, 140)), str(rng.randint(25, 80))
    f = {**doc_fields(cd, period), "sites": sites, "owned": owned}
    closing = "".join(
        f"<h2>Item {item}. {title}</h2>\n" + para(body.format(**f))
        for item, (title, body) in zip(("2", "3", "5"), TEN_K_CLOSING, strict=True)
    )
    return "".join(
        [
            _header(cd, period),
            "<h2>Item 1. Business</h2>\n",
            "".join(para(x.format(**f)) for x in BUSINESS),
            "<h2>Item 1A. Risk factors</h2>\n",
            _risk_section(rng, rng.randint(7, 9), f),
            closing,
            "<h2>Item 7. Management's discussion and analysis</h2>\n",
            _mdna(rng, cd, period, f),
            "<h2>Item 8. Financial statements</h2>\n",
            _statements(cd, period),
            "</body>\n</html>\n",
        ]
    )


def _facts(cd: CompanyData, period: Period, path: str) -> list[Fact]:
    inc, bal = cd.income(period), cd.balance(period)
    rows: list[tuple[str, float, Unit, str]] = [
        (metric, getattr(obj, a) / 10, "usd_millions", money(getattr(obj, a)))
        for spec, obj in ((_INCOME_ROWS, inc), (_BALANCE_ROWS, bal))
        for _, metric, a in spec
        if metric is not None
    ]
    rows += [(metric, value, unit, shown) for _, metric, value, unit, shown in _ratios(inc)]
    co = cd.company
    return [
        Fact(
            company=co.name,
            company_slug=co.slug,
            ticker=co.ticker,
            form=period.form,
            fiscal_year=period.year,
            period=period.label,
            metric=metric,
            value=value,
            unit=unit,
            path=path,
            display=shown,
        )
        for metric, value, unit, shown in rows
    ]


def _periods() -> list[Period]:
    return [
        p
        for year in YEARS
        for p in (*(Period("10-Q", year, q) for q in (1, 2, 3)), Period("10-K", year))
    ]


def _readme(seed: int, summary: CorpusSummary) -> str:
    return (
        f"Synthetic filings corpus (toolgym synth, seed {seed}).\n\n"
        f"{summary.companies} fictional companies, {summary.documents} documents, "
        f"{summary.facts} facts. Every company, figure and sentence is invented.\n\n"
        "filings/<slug>-10q-<year>-q<n>.html  quarterly reports (Q1-Q3) for fiscal 2024-2025\n"
        "filings/<slug>-10k-<year>.html       annual reports for fiscal 2024-2025\n"
        "companies.json  name, slug, ticker, sector, headquarters, segments\n"
        "facts.jsonl     one JSON object per (document, metric): the current-period figure\n"
        "                exactly as the document shows it ('display') and as a number ('value');\n"
        "                unit is usd_millions, percent, usd_per_share or shares_millions\n\n"
        "Fiscal years end December 31. Amounts are USD millions with one decimal; EPS is USD\n"
        "per diluted share with two decimals; margins are percent of revenue with one decimal.\n"
        "10-Q comparatives are the same quarter of the prior year (balance sheet: prior fiscal\n"
        "year end); 10-K comparatives are the prior fiscal year. Fourth-quarter figures appear\n"
        "only in the 10-K quarterly table, and annual flows equal the sum of the four quarters.\n"
        "Several names are deliberately similar (e.g. Henderson Industries / Henderson Holdings).\n"
    )


def _write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8", newline="\n")


def synthesize_corpus(out_dir: Path, seed: int = 0) -> CorpusSummary:
    """Write the corpus under ``out_dir``; the same seed always gives byte-identical files."""
    out_dir = Path(out_dir)
    facts: list[Fact] = []
    listing: list[dict[str, object]] = []
    documents = 0
    for company in COMPANIES:
        cd = simulate(company, seed)
        listing.append(
            {
                "name": company.name,
                "slug": company.slug,
                "ticker": company.ticker,
                "sector": company.sector,
                "hq": company.hq,
                "segments": list(cd.segment_names),
            }
        )
        for period in _periods():
            path = filing_path(company.slug, period.form, period.year, period.quarter)
            rng = random.Random(f"{seed}:{path}")
            render = _ten_k if period.quarter is None else _ten_q
            _write(out_dir / path, render(rng, cd, period))
            facts.extend(_facts(cd, period, path))
            documents += 1
    summary = CorpusSummary(companies=len(COMPANIES), documents=documents, facts=len(facts))
    _write(out_dir / "facts.jsonl", "".join(f.model_dump_json() + "\n" for f in facts))
    _write(out_dir / "companies.json", json.dumps(listing, indent=2) + "\n")
    _write(out_dir / "README.txt", _readme(seed, summary))
    return summary


def load_facts(path: Path | str) -> list[Fact]:
    """Read a ``facts.jsonl`` written by :func:`synthesize_corpus`."""
    with open(path, encoding="utf-8") as fh:
        return [Fact.model_validate_json(line) for line in fh if line.strip()]
