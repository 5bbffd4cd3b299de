from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydantic
import pytest

from toolservers.htmltext import html_to_text
from toolservers.synth import CorpusSummary, Fact, load_facts, synthesize_corpus

PATH_RE = re.compile(
    r"^filings/[a-z0-9]+(-[a-z0-9]+)*-(10q-(2024|2025)-q[1-3]|10k-(2024|2025))\.html$"
)


@dataclass(frozen=True)
class Built:
    root: Path
    summary: CorpusSummary
    facts: list[Fact]
    texts: dict[str, str]  # corpus-relative path -> html_to_text rendering

    def metrics(self, path: str) -> dict[str, Fact]:
        return {f.metric: f for f in self.facts if f.path == path}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("corpus_seed0")
    summary = synthesize_corpus(root, seed=0)
    texts = {
        p.relative_to(root).as_posix(): html_to_text(p.read_text(encoding="utf-8"))
        for p in sorted((root / "filings").iterdir())
    }
    return Built(root, summary, load_facts(root / "facts.jsonl"), texts)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _rows(text: str, label: str) -> list[list[str]]:
    """Cells of every rendered table row whose first cell is exactly ``label``."""
    pattern = re.compile(rf"^{re.escape(label)} *\|")
    return [
        [c.strip() for c in line.split("|")[1:]]
        for line in text.splitlines()
        if pattern.match(line)
    ]


def _num(display: str) -> float:
    return float(display.replace(",", "").rstrip("%"))


def test_same_seed_is_byte_identical_and_other_seed_differs(
    built: Built, tmp_path_factory: pytest.TempPathFactory
) -> None:
    again = tmp_path_factory.mktemp("corpus_seed0_again")
    other = tmp_path_factory.mktemp("corpus_seed1")
    assert synthesize_corpus(again, seed=0) == built.summary
    synthesize_corpus(other, seed=1)
    first, second, third = _files(built.root), _files(again), _files(other)
    assert first == second
    assert first.keys() == third.keys()
    changed = [name for name in first if name.startswith("filings/") and first[name] != third[name]]
    assert len(changed) == built.summary.documents
    assert first["facts.jsonl"] != third["facts.jsonl"]


def test_counts_and_paths(built: Built) -> None:
    s = built.summary
    assert s.companies >= 40
    assert s.documents >= 300
    assert s.documents == len(built.texts) == 8 * s.companies
    assert s.facts == len(built.facts)
    assert all(PATH_RE.match(path) for path in built.texts)
    companies = json.loads((built.root / "companies.json").read_text(encoding="utf-8"))
    assert len(companies) == s.companies
    for c in companies:
        for suffix in ("10q-2025-q3", "10q-2024-q1", "10k-2024", "10k-2025"):
            assert f"filings/{c['slug']}-{suffix}.html" in built.texts
    assert "USD millions" in (built.root / "README.txt").read_text(encoding="utf-8")


def test_names_slugs_and_tickers(built: Built) -> None:
    companies = json.loads((built.root / "companies.json").read_text(encoding="utf-8"))
    names = [c["name"] for c in companies]
    assert len({c["slug"] for c in companies}) == len(companies)
    assert len({c["ticker"] for c in companies}) == len(companies)
    look_alikes = {(a, b) for a in names for b in names if a < b and a.split()[0] == b.split()[0]}
    assert len(look_alikes) >= 5
    assert ("Henderson Holdings", "Henderson Industries") in look_alikes
    assert ("Apex Materials", "Apex Materials Group") in look_alikes


def test_every_fact_is_stated_in_its_document(built: Built) -> None:
    metrics = {
        "revenue",
        "cost_of_revenue",
        "gross_profit",
        "gross_margin",
        "operating_income",
        "operating_margin",
        "net_income",
        "net_margin",
        "eps_diluted",
        "total_assets",
        "total_liabilities",
        "shareholders_equity",
        "cash",
    }
    per_doc: dict[str, set[str]] = defaultdict(set)
    for fact in built.facts:
        assert fact.display in built.texts[fact.path], (fact.path, fact.metric, fact.display)
        assert _num(fact.display) == fact.value
        assert fact.period == (
            f"FY{fact.fiscal_year}"
            if fact.form == "10-K"
            else f"{fact.fiscal_year}-Q{fact.path[-6]}"
        )
        per_doc[fact.path].add(fact.metric)
    assert set(per_doc) == set(built.texts)
    assert all(metrics <= found for found in per_doc.values())


def test_fact_values_sit_in_the_current_period_column(built: Built) -> None:
    path = "filings/henderson-industries-10q-2025-q3.html"
    facts = built.metrics(path)
    text = built.texts[path]
    assert _rows(text, "Revenue")[0][0] == facts["revenue"].display
    assert _rows(text, "Total assets")[0][0] == facts["total_assets"].display
    assert _rows(text, "Operating margin")[0][0] == facts["operating_margin"].display


def test_accounting_identities(built: Built) -> None:
    for path in built.texts:
        m = {k: f.value for k, f in built.metrics(path).items()}
        assert m["gross_profit"] == pytest.approx(m["revenue"] - m["cost_of_revenue"], abs=1e-6)
        assert m["operating_expenses"] == pytest.approx(
            m["research_and_development"] + m["selling_general_administrative"], abs=1e-6
        )
        assert m["operating_income"] == pytest.approx(
            m["gross_profit"] - m["operating_expenses"], abs=1e-6
        )
        assert m["pretax_income"] == pytest.approx(
            m["operating_income"] - m["interest_expense"], abs=1e-6
        )
        assert m["net_income"] == pytest.approx(m["pretax_income"] - m["income_tax"], abs=1e-6)
        assert m["eps_diluted"] == pytest.approx(m["net_income"] / m["diluted_shares"], abs=0.0051)
        for margin, part in (
            ("gross_margin", "gross_profit"),
            ("operating_margin", "operating_income"),
            ("net_margin", "net_income"),
        ):
            assert m[margin] == pytest.approx(100 * m[part] / m["revenue"], abs=0.051)
        assert m["total_assets"] == pytest.approx(
            m["total_liabilities"] + m["shareholders_equity"], abs=1e-6
        )
        assert m["shareholders_equity"] > 0 and m["revenue"] > 0


def test_annual_flows_are_the_sum_of_quarters(built: Built) -> None:
    for path in (p for p in built.texts if "-10k-" in p):
        match = re.fullmatch(r"filings/(.+)-10k-(\d{4})\.html", path)
        assert match is not None
        slug, year = match.groups()
        annual = built.metrics(path)
        quarterly = [built.metrics(f"filings/{slug}-10q-{year}-q{q}.html") for q in (1, 2, 3)]
        for label, metric in (
            ("Revenue", "revenue"),
            ("Net income", "net_income"),
            ("Operating income", "operating_income"),
        ):
            (row,) = [r for r in _rows(built.texts[path], label) if len(r) == 5]
            assert row[:3] == [q[metric].display for q in quarterly]
            assert row[4] == annual[metric].display
            assert sum(_num(c) for c in row[:4]) == pytest.approx(annual[metric].value, abs=1e-6)
            assert _num(row[3]) == pytest.approx(
                annual[metric].value - sum(q[metric].value for q in quarterly), abs=1e-6
            )


def test_prior_period_columns_match_earlier_documents(built: Built) -> None:
    slugs = {f.company_slug for f in built.facts}
    for slug in slugs:
        fy2024 = built.metrics(f"filings/{slug}-10k-2024.html")
        pairs = [(f"filings/{slug}-10k-2025.html", fy2024)] + [
            (
                f"filings/{slug}-10q-2025-q{q}.html",
                built.metrics(f"filings/{slug}-10q-2024-q{q}.html"),
            )
            for q in (1, 2, 3)
        ]
        for path, earlier in pairs:
            text = built.texts[path]
            for label, metric in (
                ("Revenue", "revenue"),
                ("Net income", "net_income"),
                ("Diluted earnings per share (USD)", "eps_diluted"),
                ("Gross margin", "gross_margin"),
            ):
                assert _rows(text, label)[-1][1] == earlier[metric].display
            # Balance sheets compare with the prior fiscal year end, i.e. the FY2024 10-K.
            for label, metric in (
                ("Total assets", "total_assets"),
                ("Cash and cash equivalents", "cash"),
            ):
                assert _rows(text, label)[0][1] == fy2024[metric].display


def test_text_lengths(built: Built) -> None:
    ten_k = [len(t) for p, t in built.texts.items() if "-10k-" in p]
    ten_q = [len(t) for p, t in built.texts.items() if "-10q-" in p]
    assert min(ten_k) > 8000
    assert sum(n < 8000 for n in ten_q) > 0.9 * len(ten_q)


def test_prose_states_figures_and_varies(built: Built) -> None:
    path = "filings/apex-materials-10q-2025-q2.html"
    facts, text = built.metrics(path), built.texts[path]
    assert f"${facts['revenue'].display} million" in text
    assert facts["operating_margin"].display in text.split("Management's discussion")[1]
    assert "second quarter of 2024" in text
    openings = {t.split("### Results of operations\n\n")[1][:40] for t in built.texts.values()}
    assert len(openings) > 10


def test_names_with_entities_render_cleanly(built: Built) -> None:
    path = "filings/wren-lowell-furniture-10k-2025.html"
    assert "Wren &amp; Lowell" in (built.root / path).read_text(encoding="utf-8")
    assert built.texts[path].startswith("# Wren & Lowell Furniture\n")
    assert "&amp;" not in built.texts[path] and "&#x27;" not in built.texts[path]


def test_fact_model_is_frozen_and_round_trips(built: Built) -> None:
    fact = built.facts[0]
    with pytest.raises(pydantic.ValidationError):
        fact.value = 0.0
    assert Fact.model_validate_json(fact.model_dump_json()) == fact
    first_line = (built.root / "facts.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert set(json.loads(first_line)) >= {
        "company",
        "company_slug",
        "ticker",
        "form",
        "fiscal_year",
        "period",
        "metric",
        "value",
        "unit",
        "path",
        "display",
    }
