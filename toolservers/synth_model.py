"""Financial model of the synthetic corpus: periods, statements and their simulation.

All amounts are integer tenths of a million USD, so accounting identities hold exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from toolservers.synth_companies import SECTORS, Company, Sector

__all__ = [
    "ORDINALS",
    "YEARS",
    "Balance",
    "CompanyData",
    "Form",
    "Income",
    "Period",
    "Quarter",
    "balance_prior",
    "end_date",
    "pct_of",
    "simulate",
]

YEARS = (2024, 2025)
_FIRST_YEAR = 2023  # 2024 documents need 2023 comparatives, which have no document of their own
_N_QUARTERS = 4 * (YEARS[-1] - _FIRST_YEAR + 1)

Form = Literal["10-Q", "10-K"]
ORDINALS = ("first", "second", "third", "fourth")
_MONTH_END = ("March 31", "June 30", "September 30", "December 31")


@dataclass(frozen=True)
class Income:
    """Flows for one period, in integer tenths of USD millions (shares: tenths of millions)."""

    revenue: int
    cost: int
    rd: int
    sga: int
    interest: int
    tax: int
    shares: int

    @property
    def gross(self) -> int:
        return self.revenue - self.cost

    @property
    def opex(self) -> int:
        return self.rd + self.sga

    @property
    def operating(self) -> int:
        return self.gross - self.opex

    @property
    def pretax(self) -> int:
        return self.operating - self.interest

    @property
    def net(self) -> int:
        return self.pretax - self.tax

    @property
    def eps(self) -> float:
        return _clean(round(self.net / self.shares, 2))


@dataclass(frozen=True)
class Balance:
    """Point-in-time positions, in integer tenths of USD millions."""

    cash: int
    receivables: int
    inventory: int
    other_current: int
    ppe: int
    other_assets: int
    current_liabilities: int
    debt: int
    other_liabilities: int

    @property
    def current_assets(self) -> int:
        return self.cash + self.receivables + self.inventory + self.other_current

    @property
    def assets(self) -> int:
        return self.current_assets + self.ppe + self.other_assets

    @property
    def liabilities(self) -> int:
        return self.current_liabilities + self.debt + self.other_liabilities

    @property
    def equity(self) -> int:
        return self.assets - self.liabilities


@dataclass(frozen=True)
class Quarter:
    income: Income
    balance: Balance  # as of the quarter end
    segments: tuple[int, ...]  # revenue per segment, summing to income.revenue


@dataclass(frozen=True)
class Period:
    form: Form
    year: int
    quarter: int | None = None  # None for a fiscal year

    @property
    def label(self) -> str:
        return f"FY{self.year}" if self.quarter is None else f"{self.year}-Q{self.quarter}"

    @property
    def column(self) -> str:
        return f"FY{self.year}" if self.quarter is None else f"Q{self.quarter} {self.year}"

    @property
    def prose(self) -> str:
        if self.quarter is None:
            return f"fiscal {self.year}"
        return f"the {ORDINALS[self.quarter - 1]} quarter of {self.year}"

    @property
    def end_index(self) -> int:
        """Index into the simulated quarter series of the period's last quarter."""
        return 4 * (self.year - _FIRST_YEAR) + (self.quarter or 4) - 1

    @property
    def prior(self) -> Period:
        return Period(self.form, self.year - 1, self.quarter)


def _clean(x: float) -> float:
    # Adding 0.0 turns -0.0 into 0.0, so "-0.00" never reaches a document.
    return x + 0.0


def pct_of(num: int, den: int) -> float:
    return _clean(round(100.0 * num / den, 1))


# -- simulation ----------------------------------------------------------------------------


def _simulate_income(prof: Sector, rng: random.Random) -> tuple[list[Income], list[int]]:
    base = rng.uniform(60.0, 2400.0)  # quarterly revenue in USD millions
    growth = rng.uniform(-0.07, 0.22)
    gm, rd, sga = (rng.uniform(*r) for r in (prof.gross_margin, prof.rd, prof.sga))
    tax_rate, shares = rng.uniform(0.18, 0.27), 5.0 + base * rng.uniform(0.04, 0.3)
    share_drift = rng.uniform(-0.012, 0.008)
    debt, rate = base * rng.uniform(0.2, 3.0), rng.uniform(0.035, 0.075)
    incomes: list[Income] = []
    debts: list[int] = []
    for k in range(_N_QUARTERS):
        rev = base * (1 + growth) ** (k / 4) * prof.seasonality[k % 4] * rng.gauss(1, 0.03)
        debt *= rng.uniform(0.94, 1.05)
        debts.append(round(debt * 10))
        r = round(rev * 10)
        cost = round(r * (1 - gm + rng.gauss(0, 0.012)))
        rd_k = round(r * rd * rng.gauss(1, 0.04))
        sga_k = round(r * sga * rng.gauss(1, 0.04))
        interest = round(debt * 10 * rate / 4 * rng.gauss(1, 0.03))
        pretax = r - cost - rd_k - sga_k - interest
        tax = round(pretax * (tax_rate + rng.gauss(0, 0.015)))
        n_shares = round(shares * (1 + share_drift) ** k * 10)
        incomes.append(Income(r, cost, rd_k, sga_k, interest, tax, n_shares))
    return incomes, debts


def _simulate_balance(
    prof: Sector, rng: random.Random, incomes: list[Income], debts: list[int]
) -> list[Balance]:
    cash_ratio, dso = rng.uniform(0.05, 0.35), rng.uniform(30, 75)
    inv_days, ppe_ratio = rng.uniform(*prof.inventory_days), rng.uniform(*prof.ppe_intensity)
    goodwill, cl_ratio = rng.uniform(0.1, 0.7), rng.uniform(0.45, 0.85)
    other_liab = rng.uniform(0.04, 0.15)
    out: list[Balance] = []
    for inc, debt in zip(incomes, debts, strict=True):
        annual = 4 * inc.revenue
        cash = round(annual * cash_ratio * rng.gauss(1, 0.08))
        recv = round(annual * dso / 365 * rng.gauss(1, 0.05))
        inv = round(inc.cost * 4 * inv_days / 365 * rng.gauss(1, 0.05))
        other_cur = round(annual * 0.03 * rng.gauss(1, 0.1))
        ppe = round(annual * ppe_ratio * rng.gauss(1, 0.02))
        cl = round((cash + recv + inv + other_cur) * cl_ratio * rng.gauss(1, 0.05))
        ol = round(annual * other_liab)
        partial = cash + recv + inv + other_cur + ppe
        # Goodwill absorbs whatever keeps equity at >= 20% of assets, so books never go negative.
        floor = -(-(cl + debt + ol) * 10 // 8) - partial
        other = max(round(annual * goodwill), floor)
        out.append(Balance(cash, recv, inv, other_cur, ppe, other, cl, debt, ol))
    return out


def _simulate_segments(n: int, rng: random.Random, incomes: list[Income]) -> list[tuple[int, ...]]:
    weights = [rng.uniform(0.6, 1.8) for _ in range(n)]
    drifts = [rng.uniform(-0.05, 0.12) for _ in range(n)]
    out: list[tuple[int, ...]] = []
    for k, inc in enumerate(incomes):
        w = [
            wi * (1 + d) ** (k / 4) * rng.gauss(1, 0.02)
            for wi, d in zip(weights, drifts, strict=True)
        ]
        parts = [round(inc.revenue * wi / sum(w)) for wi in w[:-1]]
        out.append((*parts, inc.revenue - sum(parts)))  # remainder keeps the sum exact
    return out


@dataclass(frozen=True)
class CompanyData:
    company: Company
    profile: Sector
    segment_names: tuple[str, ...]
    founded: int
    staff_per_musd: float  # employees per USD million of annual revenue
    quarters: tuple[Quarter, ...]

    def income(self, period: Period) -> Income:
        if period.quarter is not None:
            return self.quarters[period.end_index].income
        qs = [q.income for q in self.quarters[period.end_index - 3 : period.end_index + 1]]
        shares = round(sum(q.shares for q in qs) / 4)
        fields = ("revenue", "cost", "rd", "sga", "interest", "tax")
        return Income(**{f: sum(getattr(q, f) for q in qs) for f in fields}, shares=shares)

    def balance(self, period: Period) -> Balance:
        return self.quarters[period.end_index].balance

    def segments(self, period: Period) -> tuple[int, ...]:
        if period.quarter is not None:
            return self.quarters[period.end_index].segments
        qs = self.quarters[period.end_index - 3 : period.end_index + 1]
        return tuple(sum(col) for col in zip(*(q.segments for q in qs), strict=True))


def simulate(company: Company, seed: int) -> CompanyData:
    # A per-company stream keeps one issuer's numbers independent of the roster order.
    rng = random.Random(f"{seed}:{company.slug}")
    prof = SECTORS[company.sector]
    segment_names = tuple(rng.sample(prof.segments, rng.choice((2, 3))))
    incomes, debts = _simulate_income(prof, rng)
    balances = _simulate_balance(prof, rng, incomes, debts)
    segments = _simulate_segments(len(segment_names), rng, incomes)
    quarters = tuple(Quarter(*q) for q in zip(incomes, balances, segments, strict=True))
    staff, founded = rng.uniform(1.5, 4.5), rng.randint(1908, 2012)
    return CompanyData(company, prof, segment_names, founded, staff, quarters)


def balance_prior(period: Period) -> Period:
    # Balance sheets compare with the previous fiscal year end, as real filings do.
    return Period("10-K", period.year - 1)


def end_date(period: Period, short: bool = False) -> str:
    month_day = _MONTH_END[(period.quarter or 4) - 1]
    return f"{month_day[:3] + month_day[-3:] if short else month_day}, {period.year}"
