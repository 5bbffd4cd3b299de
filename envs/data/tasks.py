"""Candidate tasks over a synthetic corpus's facts, one generator per task type.

Each generator enumerates every candidate in a fixed order (companies in file order, periods
sorted, metrics in catalogue order), so sampling from them with a seeded RNG is deterministic.
Prompts always name the company exactly and the period with its end date, because look-alike
issuers (Henderson Industries / Henderson Holdings) and quarter/year columns sit side by side.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from itertools import combinations, pairwise

from envs.data.facts import FactLine, FactTable
from envs.data.metrics import METRICS, parse_period, period_phrase
from envs.data.recipe import AnswerFormat, FactRef, Op, Recipe
from envs.data.rows import Difficulty, GraderHint

__all__ = ["GENERATORS", "Draft", "lookalike_pairs"]


@dataclass(frozen=True)
class Draft:
    task_type: str
    difficulty: Difficulty
    prompt: str
    recipe: Recipe
    grader: GraderHint
    # Absolute error an answer computed from the stated figures may carry (None: exact).
    slack: Decimal | None = None


Generator = Callable[[FactTable, random.Random], list[Draft]]

_UNIT_FORMAT: dict[str, AnswerFormat] = {
    "usd_millions": "usd_millions",
    "percent": "percent",
    "usd_per_share": "usd_per_share",
    "shares_millions": "shares_millions",
}
# (phrase with its definition, numerator, denominator, format, decimals)
_RATIOS: tuple[tuple[str, str, str, AnswerFormat, int], ...] = (
    ("research and development expense as a percentage of revenue",
     "research_and_development", "revenue", "percent", 1),
    ("selling, general and administrative expense as a percentage of revenue",
     "selling_general_administrative", "revenue", "percent", 1),
    ("effective tax rate (income tax expense divided by income before income taxes)",
     "income_tax", "pretax_income", "percent", 1),
    ("interest expense as a percentage of operating income",
     "interest_expense", "operating_income", "percent", 1),
    ("current ratio (total current assets divided by total current liabilities)",
     "total_current_assets", "total_current_liabilities", "times", 2),
    ("ratio of long-term debt to shareholders' equity",
     "long_term_debt", "shareholders_equity", "times", 2),
    ("total liabilities as a percentage of total assets",
     "total_liabilities", "total_assets", "percent", 1),
    ("cash and cash equivalents as a percentage of total assets",
     "cash", "total_assets", "percent", 1),
)  # fmt: skip
_GROWTH_METRICS = ("revenue", "gross_profit", "operating_income", "net_income", "eps_diluted")
_COMPARE_METRICS = (
    "revenue", "gross_profit", "operating_income", "net_income", "eps_diluted",
    "operating_margin", "net_margin", "total_assets", "cash", "long_term_debt",
)  # fmt: skip
_SUM_METRICS = (
    "revenue", "cost_of_revenue", "gross_profit", "research_and_development",
    "selling_general_administrative", "operating_income", "interest_expense", "net_income",
)  # fmt: skip
_MARGINS = ("gross_margin", "operating_margin", "net_margin")


def possessive(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def _ref(f: FactLine) -> FactRef:
    return FactRef(path=f.path, company=f.company, metric=f.metric, period=f.period)


def _recipe(op: Op, facts: list[FactLine], fmt: AnswerFormat, decimals: int) -> Recipe:
    return Recipe(op=op, facts=[_ref(f) for f in facts], answer_format=fmt, decimals=decimals)


def lookalike_pairs(companies: list[str]) -> list[tuple[str, str]]:
    """Pairs of issuers whose names start with the same word (the ones agents confuse)."""
    return [(a, b) for a, b in combinations(companies, 2) if a.split()[0] == b.split()[0]]


def _spread_pairs(companies: list[str]) -> list[tuple[str, str]]:
    """Look-alike pairs plus neighbours in roster order, for tasks that need more pairs."""
    pairs = lookalike_pairs(companies)
    pairs += [p for p in pairwise(companies) if p not in pairs]
    return pairs


def lookups(table: FactTable, rng: random.Random) -> list[Draft]:
    drafts = []
    for f in table.facts:
        info = METRICS.get(f.metric)
        if info is None:
            continue
        prompt = (
            f"What was {possessive(f.company)} {info.phrase} {period_phrase(f.period, info.kind)}?"
        )
        recipe = _recipe("lookup", [f], _UNIT_FORMAT[f.unit], f.decimals)
        drafts.append(Draft("lookup", "easy", prompt, recipe, "numeric"))
    return drafts


def ratios(table: FactTable, rng: random.Random) -> list[Draft]:
    drafts = []
    for company in table.companies:
        for period in table.periods:
            for phrase, num, den, fmt, dec in _RATIOS:
                a, b = table.get(company, period, num), table.get(company, period, den)
                if a is None or b is None or b.figure <= 0 or a.figure < 0:
                    continue
                unit = "a percentage with one decimal" if fmt == "percent" else "two decimals"
                prompt = (
                    f"What was {possessive(company)} {phrase} "
                    f"{period_phrase(period, METRICS[num].kind)}? Compute it from the reported "
                    f"figures and give {unit}."
                )
                slack = Decimal("0.6").scaleb(-dec)
                recipe = _recipe("ratio", [a, b], fmt, dec)
                drafts.append(Draft("ratio", "medium", prompt, recipe, "numeric", slack))
    return drafts


def _prior_phrase(period: str) -> str:
    p = parse_period(period).prior_year()
    if p.quarter is None:
        return f"fiscal year {p.year}"
    return f"the same quarter of fiscal {p.year}"


def growths(table: FactTable, rng: random.Random) -> list[Draft]:
    drafts = []
    for company in table.companies:
        for period in table.periods:
            prior = parse_period(period).prior_year().label
            for metric in _GROWTH_METRICS:
                cur, old = table.get(company, period, metric), table.get(company, prior, metric)
                if cur is None or old is None or old.figure <= 0:
                    continue
                prompt = (
                    f"By what percentage did {possessive(company)} {METRICS[metric].phrase} "
                    f"change {period_phrase(period, 'flow')} compared with "
                    f"{_prior_phrase(period)}? Give the year-over-year change as a percentage "
                    "with one decimal (negative for a decline)."
                )
                recipe = _recipe("growth", [cur, old], "percent", 1)
                drafts.append(Draft("growth", "medium", prompt, recipe, "numeric", Decimal("0.06")))
    return drafts


def comparisons(table: FactTable, rng: random.Random) -> list[Draft]:
    drafts = []
    for pair in lookalike_pairs(table.companies):
        for period in table.periods:
            for metric in _COMPARE_METRICS:
                a, b = rng.sample(pair, 2)
                fa, fb = table.get(a, period, metric), table.get(b, period, metric)
                if fa is None or fb is None or fa.figure == fb.figure:
                    continue
                word = rng.choice(("higher", "lower"))
                info = METRICS[metric]
                prompt = (
                    f"Which company reported {word} {info.phrase} "
                    f"{period_phrase(period, info.kind)}: {a} or {b}? Answer with the "
                    "company's exact name."
                )
                op: Op = "argmax" if word == "higher" else "argmin"
                recipe = _recipe(op, [fa, fb], "company", 0)
                drafts.append(Draft("comparison", "hard", prompt, recipe, "string"))
    return drafts


def aggregates(table: FactTable, rng: random.Random) -> list[Draft]:
    drafts = []
    years = sorted({parse_period(p).year for p in table.periods})
    for company in table.companies:
        for year in years:
            for metric in _SUM_METRICS:
                facts = [table.get(company, f"{year}-Q{q}", metric) for q in (1, 2, 3)]
                found = [f for f in facts if f is not None]
                if len(found) != 3:
                    continue
                prompt = (
                    f"What was {possessive(company)} combined {METRICS[metric].phrase} for the "
                    f"first three quarters of fiscal {year} (the sum of the three-month periods "
                    f"ended March 31, June 30 and September 30, {year})?"
                )
                recipe = _recipe("sum", found, "usd_millions", 1)
                drafts.append(Draft("aggregate", "hard", prompt, recipe, "numeric"))
    return drafts


def differences(table: FactTable, rng: random.Random) -> list[Draft]:
    drafts = []
    for pair in _spread_pairs(table.companies):
        for period in table.periods:
            for metric in _MARGINS:
                a, b = rng.sample(pair, 2)
                fa, fb = table.get(a, period, metric), table.get(b, period, metric)
                if fa is None or fb is None:
                    continue
                phrase, when = METRICS[metric].phrase, period_phrase(period, "flow")
                prompt = (
                    f"{when[0].upper()}{when[1:]}, what was {possessive(a)} "
                    f"{phrase} minus {possessive(b)} {phrase}, in percentage points? "
                    f"Answer negative if {possessive(a)} {phrase} was lower."
                )
                recipe = _recipe("difference", [fa, fb], "points", 1)
                # Margins recomputed from the amounts may each be 0.05 points off.
                drafts.append(
                    Draft("difference", "hard", prompt, recipe, "numeric", Decimal("0.12"))
                )
    return drafts


GENERATORS: dict[str, Generator] = {
    "lookup": lookups,
    "ratio": ratios,
    "growth": growths,
    "comparison": comparisons,
    "aggregate": aggregates,
    "difference": differences,
}
