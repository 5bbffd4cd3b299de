"""Prose of the synthetic filings: display formatters, phrasing templates and their fields.

Several phrasings per statement are picked by the document's rng, so that filings do not read
as one template and a retriever cannot key on fixed wording.
"""

from __future__ import annotations

import html
import random
from collections.abc import Sequence

from toolservers.synth_model import (
    ORDINALS,
    CompanyData,
    Income,
    Period,
    balance_prior,
    end_date,
    pct_of,
)

__all__ = [
    "ACCOUNTING_ESTIMATES",
    "BUSINESS",
    "DRIVERS",
    "GM_REASONS",
    "GROSS",
    "LIQUIDITY",
    "LIQ_CLOSE",
    "NET",
    "OPERATING",
    "OPEX",
    "OVERVIEW",
    "REVENUE",
    "RISKS",
    "SEGMENT",
    "SEG_REASONS",
    "TEN_K_CLOSING",
    "doc_fields",
    "eps",
    "money",
    "para",
    "pct",
    "results_prose",
    "say",
    "segment_prose",
]


# -- formatters ----------------------------------------------------------------------------


def money(tenths: int) -> str:
    """Display form of an amount in tenths of USD millions: ``12345 -> "1,234.5"``."""
    sign = "-" if tenths < 0 else ""
    whole, frac = divmod(abs(tenths), 10)
    return f"{sign}{whole:,}.{frac}"


def pct(value: float) -> str:
    """Display form of a percentage: ``13.4 -> "13.4%"``."""
    return f"{value:.1f}%"


def eps(value: float) -> str:
    """Display form of a per-share amount: ``1.2 -> "1.20"``."""
    return f"{value:.2f}"


# -- prose ---------------------------------------------------------------------------------

OVERVIEW = (
    "{name} ({ticker}) {activity}. This discussion covers {period}, which ended {end}, and "
    "compares it with {prior}. Amounts are in USD millions except per-share data.",
    "The following discussion should be read together with the financial statements in this "
    "report. {name} reports in U.S. dollars; amounts are in millions except per-share data.",
    "{name} operates through {n_seg} reportable segments: {seg_list}. Results for {period} are "
    "compared with {prior}; all amounts are in USD millions unless stated otherwise.",
)
REVENUE = (
    "Revenue {moved} {growth} to {rev} compared with {prev_rev} in {prior}.",
    "Total revenue for {period} was {rev}, {updown} {growth} from {prev_rev} in {prior}.",
    "{name} reported revenue of {rev} for {period}, {a_change} of {growth} from {prev_rev} a "
    "year earlier.",
)
DRIVERS = {
    True: (
        "higher volumes in {seg0}",
        "pricing actions that took effect during the year",
        "new customer programs that ramped faster than planned",
        "stronger order intake across {seg_list}",
    ),
    False: (
        "softer demand in {seg0}",
        "customer inventory destocking",
        "the planned exit of lower-margin product lines",
        "weaker volumes and unfavorable currency translation",
    ),
}
GROSS = (
    "Gross profit was {gross} and gross margin was {gm}, compared with {prev_gm} in {prior}, "
    "reflecting {gm_reason}.",
    "Cost of revenue totaled {cost}, leaving gross profit of {gross}; gross margin {gm_moved} "
    "to {gm} from {prev_gm}, mostly because of {gm_reason}.",
)
GM_REASONS = {
    True: (
        "a more favorable product mix",
        "productivity gains in plants and service centers",
        "lower freight and input costs",
    ),
    False: (
        "higher labor and material costs",
        "a mix shift toward lower-margin work",
        "under-absorption of fixed costs at lower volumes",
    ),
}
OPEX = (
    "Operating expenses were {opex}, consisting of research and development of {rd} and "
    "selling, general and administrative expenses of {sga}.",
    "Research and development spending was {rd} and selling, general and administrative "
    "expense was {sga}, for total operating expenses of {opex} versus {prev_opex} a year ago.",
)
OPERATING = (
    "{name} recorded {op_phrase}, an operating margin of {om} compared with {prev_om} in {prior}.",
    "Operating margin {om_moved} to {om} from {prev_om}, and the company recorded {op_phrase}.",
)
NET = (
    "{name} reported {net_phrase}, or {eps_phrase}, compared with {prev_net_phrase}, or "
    "{prev_eps_phrase}, in {prior}. Net margin was {nm}.",
    "The bottom line was {net_phrase} ({eps_phrase}), against {prev_net_phrase} "
    "({prev_eps_phrase}) in {prior}; net margin came in at {nm}.",
)
SEGMENT = (
    "{seg} revenue was {seg_rev}, {updown} {seg_growth} year over year, and represented "
    "{seg_share} of total revenue.",
    "In {seg}, revenue {moved} {seg_growth} to {seg_rev} ({seg_share} of the total), {reason}.",
    "The {seg} segment generated {seg_rev}, compared with {prev_seg_rev} in {prior}, {reason}.",
)
SEG_REASONS = {
    True: (
        "helped by new contract wins",
        "as backlog converted to shipments",
        "supported by price increases",
    ),
    False: (
        "as several large customers delayed orders",
        "reflecting weaker end markets",
        "partly because of a difficult prior-year comparison",
    ),
}
LIQUIDITY = (
    "As of {end}, cash and cash equivalents were {cash} and long-term debt was {debt}. Total "
    "assets were {assets}, total liabilities were {liab} and shareholders' equity was {equity}.",
    "{name} ended {period} with {cash} of cash and cash equivalents, compared with {prev_cash} "
    "at {prev_end}. Long-term debt stood at {debt} and shareholders' equity at {equity}.",
)
LIQ_CLOSE = (
    "Management believes that cash on hand, cash from operations and the undrawn revolving "
    "credit facility will be sufficient to fund working capital, capital expenditures and debt "
    "service for at least the next twelve months.",
    "We expect to fund operations, planned capital spending and scheduled debt maturities from "
    "existing cash and operating cash flow, and we remain in compliance with all covenants.",
    "Capital allocation priorities are unchanged: reinvest in the business, keep leverage "
    "within the target range and return surplus cash to shareholders.",
)
RISKS = (
    (
        "We depend on a limited number of large customers.",
        "A meaningful share of revenue at {name} comes from a small group of customers, several of "
        "whom buy under agreements they may terminate or renegotiate. Losing a major account, "
        "lower order volumes or pressure to extend payment terms could reduce revenue in {seg0} "
        "and elsewhere, and would be difficult to offset quickly.",
    ),
    (
        "Supply chain disruptions could delay shipments and raise costs.",
        "We buy raw materials, components and transport from third parties, some of whom are the "
        "only qualified source for an input. Shortages, port congestion, tariffs or a supplier's "
        "failure could force us to pay more, hold extra inventory or miss delivery commitments, "
        "hurting both margins and customer relationships.",
    ),
    (
        "Our indebtedness could limit our flexibility.",
        "At the end of {period}, long-term debt was {debt}. Servicing it uses cash that would "
        "otherwise fund investment, and our credit agreements restrict additional borrowing, asset "
        "sales and distributions. Refinancing at higher interest rates would increase interest "
        "expense and reduce net income.",
    ),
    (
        "A cybersecurity incident could disrupt operations.",
        "Our operations rely on information systems run by us and by vendors. Ransomware, phishing "
        "or exploited software flaws could interrupt production, order processing or billing, "
        "compromise confidential data and lead to penalties, litigation and reputational harm that "
        "insurance may not fully cover.",
    ),
    (
        "Changes in laws and regulations could increase our costs.",
        "We are subject to environmental, safety, trade, tax and data-protection rules wherever we "
        "operate. New requirements, stricter enforcement or new interpretations of existing rules "
        "could require capital spending, change how we sell, or expose {name} to fines and "
        "remediation obligations.",
    ),
    (
        "We may not retain or attract the people we need.",
        "Results depend on experienced managers, engineers and skilled frontline employees. "
        "Competition for talent around {hq} and our other locations is intense, and wage "
        "inflation, labor shortages or the departure of senior leaders could slow execution of our "
        "strategy and raise operating expenses.",
    ),
    (
        "Competitive pressure could erode prices and market share.",
        "We compete with larger companies that have greater resources and with specialists that "
        "focus on niches within {seg_list}. Competitors may cut prices, launch better products or "
        "bundle offerings in ways we cannot match, forcing us to lower prices or spend more on "
        "research and marketing.",
    ),
    (
        "International operations expose us to currency and political risk.",
        "Part of our revenue is earned and part of our cost incurred outside the United States. "
        "Exchange-rate movements change reported results on translation into U.S. dollars, and "
        "sanctions, trade restrictions or instability abroad could interrupt sales or make it "
        "harder to bring cash home.",
    ),
    (
        "Acquisitions may not deliver the expected benefits.",
        "We have grown partly through acquisitions and expect to continue. Integration can take "
        "longer and cost more than planned, acquired units may underperform, and we could record "
        "impairments of goodwill and other intangible assets, which are a significant part of "
        "total assets of {assets}.",
    ),
    (
        "Severe weather and climate change could affect facilities and demand.",
        "Hurricanes, floods, heat waves and wildfires can damage plants, interrupt transport and "
        "disrupt customers. Over time, climate shifts and policy responses to them could change "
        "demand for our products, raise insurance and energy costs and require investment to "
        "adapt our sites.",
    ),
    (
        "Product defects or service failures could result in claims.",
        "If products or services sold by {name} fail to perform as promised, we may face warranty "
        "costs, recalls, contract penalties and liability claims. Even claims without merit are "
        "costly to defend and can damage the reputation on which customer relationships rest.",
    ),
)
BUSINESS = (
    "{name} was founded in {founded} and is headquartered in {hq}. The company {activity}, "
    "selling mainly to {customers}. At the end of {period} it employed approximately "
    "{employees} people.",
    "We manage the business through {n_seg} reportable segments: {seg_list}. Each segment has "
    "its own leadership, sales organization and product roadmap, and management evaluates "
    "segment performance on revenue and operating profit.",
    "Our markets are fragmented and competitive. We compete on product performance, "
    "reliability, lead times, service and total cost of ownership. We believe our installed "
    "base, engineering depth and long customer relationships are real advantages, although "
    "several competitors are larger and better capitalized.",
    "Demand is somewhat seasonal: revenue has historically been highest in the {peak} quarter "
    "and lowest in the {trough} quarter of the fiscal year, which ends on December 31.",
)
TEN_K_CLOSING = (
    (
        "Properties",
        "Our principal executive offices are in {hq}. We operate {sites} "
        "manufacturing, distribution and office sites, about {owned}% of them owned and the rest "
        "leased, and we believe they are in good condition and adequate for current needs.",
    ),
    (
        "Legal proceedings",
        "From time to time {name} is party to lawsuits, claims and regulatory "
        "inquiries arising in the ordinary course of business. Management does not expect pending "
        "matters to have a material adverse effect on our financial position or results.",
    ),
    (
        "Market for common equity",
        "{name} common stock trades under the ticker symbol {ticker}. "
        "Diluted weighted-average shares outstanding were {shares} million for {period}.",
    ),
)
ACCOUNTING_ESTIMATES = (
    "Preparing financial statements requires estimates that affect reported amounts. The "
    "estimates we consider most critical concern revenue recognition on multi-element "
    "contracts, inventory valuation, the recoverability of goodwill and long-lived assets, and "
    "income taxes. Actual results could differ."
)


# -- fields --------------------------------------------------------------------------------


def _usd(tenths: int) -> str:
    return f"${money(abs(tenths))} million"  # the sign is carried by the wording


def _signed(tenths: int, gain: str, loss: str) -> str:
    return f"{gain} {_usd(tenths)}" if tenths >= 0 else f"{loss} {_usd(tenths)}"


def _eps_phrase(value: float) -> str:
    if value >= 0:
        return f"${eps(value)} per diluted share"
    return f"a loss of ${eps(-value)} per diluted share"


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _income_fields(cur: Income, prev: Income) -> dict[str, str]:
    up = cur.revenue >= prev.revenue
    gm, prev_gm = pct_of(cur.gross, cur.revenue), pct_of(prev.gross, prev.revenue)
    om, prev_om = pct_of(cur.operating, cur.revenue), pct_of(prev.operating, prev.revenue)
    return {
        "rev": _usd(cur.revenue),
        "prev_rev": _usd(prev.revenue),
        "growth": pct(abs(pct_of(cur.revenue - prev.revenue, prev.revenue))),
        "moved": "increased" if up else "decreased",
        "updown": "up" if up else "down",
        "a_change": "an increase" if up else "a decrease",
        "cost": _usd(cur.cost),
        "gross": _usd(cur.gross),
        "gm": pct(gm),
        "prev_gm": pct(prev_gm),
        "gm_moved": "improved" if gm >= prev_gm else "declined",
        "rd": _usd(cur.rd),
        "sga": _usd(cur.sga),
        "opex": _usd(cur.opex),
        "prev_opex": _usd(prev.opex),
        "om": pct(om),
        "prev_om": pct(prev_om),
        "om_moved": "improved" if om >= prev_om else "declined",
        "op_phrase": _signed(cur.operating, "operating income of", "an operating loss of"),
        "net_phrase": _signed(cur.net, "net income of", "a net loss of"),
        "prev_net_phrase": _signed(prev.net, "net income of", "a net loss of"),
        "eps_phrase": _eps_phrase(cur.eps),
        "prev_eps_phrase": _eps_phrase(prev.eps),
        "nm": pct(pct_of(cur.net, cur.revenue)),
        "shares": money(cur.shares),
    }


def doc_fields(cd: CompanyData, period: Period) -> dict[str, str]:
    co, bal, prev_bal = cd.company, cd.balance(period), cd.balance(balance_prior(period))
    season, annual = cd.profile.seasonality, cd.income(Period("10-K", period.year))
    return {
        "name": co.name,
        "ticker": co.ticker,
        "hq": co.hq,
        "activity": cd.profile.activity,
        "customers": cd.profile.customers,
        "founded": str(cd.founded),
        "employees": f"{round(annual.revenue / 10 * cd.staff_per_musd, -1):,.0f}",
        "period": period.prose,
        "prior": period.prior.prose,
        "end": end_date(period),
        "prev_end": end_date(balance_prior(period)),
        "n_seg": ("two", "three")[len(cd.segment_names) - 2],
        "seg_list": _join(cd.segment_names),
        "seg0": cd.segment_names[0],
        "peak": ORDINALS[season.index(max(season))],
        "trough": ORDINALS[season.index(min(season))],
        "cash": _usd(bal.cash),
        "prev_cash": _usd(prev_bal.cash),
        "debt": _usd(bal.debt),
        "assets": _usd(bal.assets),
        "liab": _usd(bal.liabilities),
        "equity": _usd(bal.equity),
        **_income_fields(cd.income(period), cd.income(period.prior)),
    }


def para(text: str) -> str:
    return f"<p>{html.escape(text)}</p>\n"


def say(rng: random.Random, templates: Sequence[str], fields: dict[str, str]) -> str:
    return rng.choice(templates).format(**fields)


def results_prose(rng: random.Random, f: dict[str, str], up: bool) -> str:
    driver = say(rng, DRIVERS[up], f)
    change = "increase" if up else "decline"
    revenue = f"{say(rng, REVENUE, f)} The {change} was driven mainly by {driver}."
    reason = rng.choice(GM_REASONS[f["gm_moved"] == "improved"])
    gross = say(rng, GROSS, {**f, "gm_reason": reason})
    body = [revenue, f"{gross} {say(rng, OPEX, f)}", say(rng, OPERATING, f), say(rng, NET, f)]
    return "".join(para(x) for x in body)


def segment_prose(rng: random.Random, cd: CompanyData, period: Period, f: dict[str, str]) -> str:
    cur, prev = cd.segments(period), cd.segments(period.prior)
    # Reasons are drawn without replacement so sibling segments get different explanations.
    reasons = {up: rng.sample(pool, len(pool)) for up, pool in SEG_REASONS.items()}
    out = []
    for name, c, p in zip(cd.segment_names, cur, prev, strict=True):
        up = c >= p
        seg = {
            **f,
            "seg": name,
            "seg_rev": _usd(c),
            "prev_seg_rev": _usd(p),
            "seg_growth": pct(abs(pct_of(c - p, p))),
            "seg_share": pct(pct_of(c, sum(cur))),
            "moved": "increased" if up else "decreased",
            "updown": "up" if up else "down",
            "reason": reasons[up].pop(),
        }
        out.append(say(rng, SEGMENT, seg))
    return para(" ".join(out))
