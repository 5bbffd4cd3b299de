"""Graders: numbers in every format, rounding slips, picking the answer, spans, the LLM judge
(against a fake chat-completions endpoint on httpx.MockTransport), composition, config."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from envs.graders import (
    CompositeGrader,
    Grader,
    GraderConfigError,
    GradeResult,
    GraderInputError,
    JudgeConfig,
    JudgeGrader,
    NumericGrader,
    Part,
    Reference,
    StringGrader,
    ToolUsePolicy,
    Verdict,
    check_grader_spec,
    grade_command,
    grade_row,
    known_grader_types,
    make_grader,
    normalize_answer,
    parse_judge_score,
    register_grader_type,
)
from envs.graders.numbers import Kind, quantities_in
from envs.graders.registry import JudgeSpec
from envs.graders.string import span_f1

MONEY = "$842.5 million"


def numeric(answer: str, reference: str = MONEY, tolerance: float | None = None) -> GradeResult:
    return NumericGrader().grade(answer, Reference(answer=reference, tolerance_rel=tolerance))


# ---- the tutorial's standalone cases ----


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("842.5 million", 1.0),
        ("$842,500,000", 1.0),
        ("about 842 million", 1.0),
        ("900 million", 0.0),
    ],
)
def test_tutorial_grader_cases(answer: str, score: float) -> None:
    assert numeric(answer, "$842.5 million").score == score


@pytest.mark.parametrize(
    ("answer", "score", "verdict"),
    [
        ("13.4%", 1.0, Verdict.CORRECT),  # exact
        ("0.134", 1.0, Verdict.CORRECT),  # format variant: the ratio
        ("13.41%", 0.5, Verdict.ROUNDING_SLIP),  # states a digit the reference does not
        ("12.0%", 0.0, Verdict.WRONG),
    ],
)
def test_tutorial_percent_cases(answer: str, score: float, verdict: Verdict) -> None:
    result = numeric(answer, "13.4%")
    assert (result.score, result.verdict) == (score, verdict), result.details


# ---- answers more precise than the reference ----


@pytest.mark.parametrize(
    ("reference", "answer", "tolerance", "score"),
    [
        ("13.4%", "13.40%", None, 1.0),  # a trailing zero is the same value
        ("13.4%", "13.4000 percent", None, 1.0),
        ("13.4%", "0.1341", None, 0.5),  # the ratio, one digit finer
        ("13.4%", "13.41", None, 0.5),  # bare, read in the reference's unit
        ("13.4%", "13.45%", None, 0.5),  # half a unit off: still rounds to it
        ("13.4%", "13.41%", 0.02, 1.0),  # an explicit tolerance covers the extra digit
        ("13.4271%", "13.4271%", None, 1.0),  # a reference with many digits
        ("13.4271%", "13.42712%", None, 0.5),
        ("13.4271%", "13.427%", None, 1.0),  # fewer digits, rounded right: unchanged
        ("13.4271%", "13.43%", None, 1.0),
        ("1,234,567.89", "1,234,567.894", 0.0, 0.5),
        ("1,234,567.89", "1,234,567.890", 0.0, 1.0),
        ("$842.5 million", "$842.53 million", None, 1.0),  # inside the default 2%
        ("$842.5 million", "$842.53 million", 0.0, 0.5),
        ("$842.5 million", "842,530,000", 0.0, 0.5),  # scale written out, a finer digit
        ("$842.5 million", "842,500,000", 0.0, 1.0),  # ... or the same value
        ("$842.5 million", "$0.8425 billion", 0.0, 1.0),
        ("$842.5 million", "842.53", 0.0, 0.5),  # bare, in the reference's unit
        ("$12.6 thousand", "$12,630", 0.0, 0.5),
        ("-12.6%", "-12.6%", None, 1.0),
        ("-12.6%", "-12.64%", None, 0.5),
        ("-12.6%", "decreased by 12.64%", None, 0.5),
        ("-12.6%", "12.64%", None, 0.0),  # the sign is wrong
        ("-12.6 million", "-12.63 million", 0.0, 0.5),
        ("-12.6 million", "(12.60) million", 0.0, 1.0),
    ],
)
def test_more_digits_than_the_reference(
    reference: str, answer: str, tolerance: float | None, score: float
) -> None:
    result = numeric(answer, reference, tolerance)
    assert result.score == score, result.details
    if score == 0.5:
        assert result.verdict is Verdict.ROUNDING_SLIP
        assert result.details["rule"] == "more_precise_than_reference"


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=1, max_value=99_999),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=0, max_value=5),
    st.sampled_from(["", "%", " million"]),
    st.booleans(),
)
def test_an_extra_digit_that_rounds_away_costs_half_unless_it_is_zero(
    digits: int, decimals: int, extra: int, unit: str, negative: bool
) -> None:
    mantissa = f"{'-' if negative else ''}{Decimal(digits).scaleb(-decimals):f}"
    longer = f"{mantissa}{'' if decimals else '.'}{extra}"  # 12.3 -> 12.34; 12 -> 12.4
    result = numeric(f"{longer}{unit}", f"{mantissa}{unit}", tolerance=0.0)
    assert result.score == (1.0 if extra == 0 else 0.5), (longer, mantissa, result.details)


# ---- reading numbers ----


@pytest.mark.parametrize(
    ("text", "value", "percent", "currency"),
    [
        ("$842.5 million", "842500000", False, "USD"),
        ("842,500,000", "842500000", False, None),
        ("1 234 567.8", "1234567.8", False, None),
        ("1\u00a0234\u202f567", "1234567", False, None),
        ("USD 842.5mn", "842500000", False, "USD"),
        ("€842.5 million", "842500000", False, "EUR"),
        ("£5k", "5000", False, "GBP"),
        ("GBP 3 billion", "3000000000", False, "GBP"),
        ("842.5 million dollars", "842500000", False, "USD"),
        ("842.5 MM", "842500000", False, None),
        ("842.5 M", "842500000", False, None),
        ("1.2bn", "1200000000", False, None),
        ("1.2B", "1200000000", False, None),
        ("2 trillion", "2000000000000", False, None),
        ("40 thousand", "40000", False, None),
        ("(1,234)", "-1234", False, None),
        ("$(1,234)", "-1234", False, "USD"),
        ("($1.2 million)", "-1200000", False, "USD"),
        ("Net change: (5.2)", "-5.2", False, None),
        ("−3.2%", "-3.2", True, None),
        ("-3.2 percent", "-3.2", True, None),
        ("+4%", "4", True, None),
        ("7 per cent", "7", True, None),
        ("2 percentage points", "2", True, None),
        ("50 bps", "0.50", True, None),
        ("minus 4", "-4", False, None),
        ("2.5x", "2.5", False, None),
        (".5", "0.5", False, None),
        ("１２３", "123", False, None),
        ("1.2345e+09", "1234500000", False, None),
        ("USD842.5 mln", "842500000", False, "USD"),
        ("3 bln euros", "3000000000", False, "EUR"),
    ],
)
def test_number_formats_are_read(
    text: str, value: str, percent: bool, currency: str | None
) -> None:
    (q,) = quantities_in(text)
    assert q.value == Decimal(value)
    assert q.percent is percent
    assert q.currency == currency


@pytest.mark.parametrize(
    "text",
    ["Q3", "FY2025", "Q3'25", "COVID-19", "10-K", "10-Q filing", "3rd", "henderson-10q", "3-month"],
)
def test_labels_are_not_numbers(text: str) -> None:
    assert quantities_in(text) == []


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("in 2025", Kind.YEAR),
        ("September 30", Kind.DATE),
        ("30 September", Kind.DATE),
        ("revenue (2) was", Kind.FOOTNOTE),
        ("1. Revenue", Kind.LIST),
        ("2) Cost", Kind.LIST),
        ("2025-09-30", Kind.DATE),
        ("9/30/2025", Kind.DATE),
        ("2,025", Kind.NUMBER),
        ("$2025", Kind.NUMBER),
    ],
)
def test_noise_is_flagged(text: str, kind: Kind) -> None:
    assert quantities_in(text)[0].kind is kind


# ---- the numeric grader: formats against one reference ----


@pytest.mark.parametrize(
    "answer",
    [
        "842.5 million",
        "$842.5 million",
        "$842,500,000",
        "842,500,000",
        "842 500 000",
        "$0.8425 billion",
        "0.8425bn",
        "$842.5M",
        "$842.5m",
        "842.5mn",
        "842.5 MM",
        "USD 842.5 million",
        "842.5 million USD",
        "$842 million dollars",
        "842,500 thousand",
        "842.5",  # a bare figure is read in the reference's unit
        "about $843 million",
        "＄８４２.５ million",
    ],
)
def test_money_formats_are_right(answer: str) -> None:
    result = numeric(answer)
    assert (result.score, result.verdict) == (1.0, Verdict.CORRECT), result.details


@pytest.mark.parametrize(
    "answer",
    [
        "842.5 billion",  # an explicit, different magnitude
        "842.5 thousand",
        "€842.5 million",  # another currency
        "$1 billion",  # a consistent rounding, but to one digit: 19% off
        "$0.8 billion",
        "84.25 million",
        "-842.5 million",
        "0.8425",
    ],
)
def test_money_near_misses_are_wrong(answer: str) -> None:
    result = numeric(answer)
    assert (result.score, result.verdict) == (0.0, Verdict.WRONG), result.details


def test_currency_mismatch_is_recorded() -> None:
    assert numeric("€842.5 million").details["rule"] == "currency_mismatch"


SHARES = "336.3 million shares"


@pytest.mark.parametrize(
    ("reference", "answer", "score"),
    [
        # money is not a count, whatever else the figure gets right
        (MONEY, "$842.5 shares", 0.0),  # what GRPO learnt to write on the demo
        (MONEY, "842.5 shares", 0.0),
        (MONEY, "842.5 million shares", 0.0),
        (SHARES, "$336.3 million", 0.0),
        (SHARES, "$336.3", 0.0),
        # a count against a count; money "per share" is still money
        (SHARES, "336.3 million shares", 1.0),
        (SHARES, "336.3 million common shares", 1.0),
        (SHARES, "336.3 shares", 1.0),  # the scale left out, as in a table "(millions)"
        (SHARES, "336.3 million", 1.0),
        (SHARES, "336,300,000 shares", 1.0),
        ("$0.35", "$0.35 per share", 1.0),
        ("$0.35", "0.35 per share", 1.0),
    ],
)
def test_money_and_share_counts_are_different_units(
    reference: str, answer: str, score: float
) -> None:
    result = numeric(answer, reference)
    assert result.score == score, result.details
    if not score:
        assert result.details["rule"] == "unit_mismatch", result.details


@pytest.mark.parametrize(
    ("reference", "answer", "score"),
    [
        ("7%", "7%", 1.0),
        ("7%", "7 percent", 1.0),
        ("7%", "0.07", 1.0),  # the ratio
        ("7%", "7", 1.0),  # points, in the reference's unit
        ("7%", "7.0%", 1.0),
        ("7%", "7.4%", 0.5),  # rounds to the reference, but states a digit it does not
        ("7%", "7.6%", 0.0),
        ("7%", "$7", 0.0),
        ("7%", "7 million", 0.0),
        ("0.07", "7%", 1.0),  # a plain ratio: 7% is 0.07
        ("0.07", "0.07%", 0.0),  # ... and 0.07% is 0.0007
        ("13.4", "13.4%", 0.0),  # a plain reference is read as written
        ("13.4%", "0.134", 1.0),
        ("13.4%", "13.4", 1.0),
        ("13.4%", "13.42 per cent", 0.5),
        ("13.4271%", "13.4%", 1.0),  # rounded to a tenth of a point, correctly
        ("0.5%", "50 bps", 1.0),
        ("-3.2%", "−3.2%", 1.0),
        ("-3.2%", "-3.2 percent", 1.0),
        ("-3.2%", "Change: (3.2%)", 1.0),
        ("-3.2%", "decreased by 3.2%", 1.0),  # the sign is in the words
        ("-3.2%", "down 3.2%", 1.0),
        ("-3.2%", "a 3.2% decline", 1.0),
        ("-3.2%", "3.2%", 0.0),
        ("-3.2%", "increased by 3.2%", 0.0),
        ("3.2%", "decreased by 3.2%", 1.0),  # words never flip a positive reference
        ("(1,234)", "-1,234", 1.0),
        ("(1,234)", "(1,234)", 1.0),
        ("(1,234)", "1,234", 0.0),
        ("-$5 million", "a loss of $5 million", 1.0),
        ("2019", "It was founded in 2019.", 1.0),  # a year reference keeps years
        ("0", "0.0", 1.0),
    ],
)
def test_percent_fraction_and_sign_rules(reference: str, answer: str, score: float) -> None:
    assert numeric(answer, reference).score == score


@pytest.mark.parametrize(
    ("reference", "answer", "tolerance", "score", "verdict"),
    [
        ("13.4%", "13.3%", None, 0.5, Verdict.ROUNDING_SLIP),  # within a tenth of a point
        ("13.4%", "13.5%", None, 0.5, Verdict.ROUNDING_SLIP),
        ("13.4%", "13.46%", None, 0.5, Verdict.ROUNDING_SLIP),
        ("13.4%", "13.2%", None, 0.0, Verdict.WRONG),  # 1.5% relative: no default for percent
        ("13.4%", "13%", None, 0.5, Verdict.ROUNDING_SLIP),  # right, but too coarse
        ("13.4%", "0.133", None, 0.5, Verdict.ROUNDING_SLIP),
        ("13.4%", "13.3%", 0.02, 1.0, Verdict.CORRECT),  # an explicit tolerance covers percent
        ("1,234.5", "1,234", None, 1.0, Verdict.CORRECT),  # within the default 2%
        ("1,234.5", "1,235", 0.0001, 0.5, Verdict.ROUNDING_SLIP),  # half up, also coarse
        ("1,234.5", "1,234.46", 0.0, 0.5, Verdict.ROUNDING_SLIP),  # more digits, rounds to it
        ("1,234.5", "1,234", 0.0001, 0.5, Verdict.ROUNDING_SLIP),  # fewer digits than allowed
        ("1,234.5", "1,234.4", 0.0, 0.5, Verdict.ROUNDING_SLIP),  # one unit in the last digit
        ("1,234.5", "1,234.3", 0.0, 0.0, Verdict.WRONG),
        ("1,234.5", "1,233", 0.0001, 0.0, Verdict.WRONG),
        ("$1,843.3 million", "$1,843 million", 0.001, 1.0, Verdict.CORRECT),
        ("$1,843.3 million", "$1.84 billion", 0.001, 0.5, Verdict.ROUNDING_SLIP),
        ("$1,843.3 million", "$1.8 billion", 0.001, 0.5, Verdict.ROUNDING_SLIP),
        ("4.5", "4.4", None, 0.0, Verdict.WRONG),  # 2 digits: one unit is no slip
        ("13", "12", None, 0.0, Verdict.WRONG),
        ("3", "4", None, 0.0, Verdict.WRONG),
    ],
)
def test_rounding_slips(
    reference: str, answer: str, tolerance: float | None, score: float, verdict: Verdict
) -> None:
    result = numeric(answer, reference, tolerance)
    assert (result.score, result.verdict) == (score, verdict), result.details


def test_row_tolerance_overrides_the_grader_default() -> None:
    strict = Reference(answer="100", tolerance_rel=0.001)
    assert NumericGrader(0.05).grade("97", Reference(answer="100")).score == 1.0
    assert NumericGrader(0.05).grade("97", strict).score == 0.0


# ---- which figure is the answer ----


@pytest.mark.parametrize(
    ("answer", "score", "picked_by"),
    [
        (
            "Revenue grew from $1,141.0 million to $1,234.5 million, "
            "so the answer is $1,234.5 million",
            1.0,
            "marker",
        ),
        ("Answer: $1,234.5 million (up from $1,141.0 million)", 1.0, "marker"),
        ("**Final answer**: 1,234.5 million", 1.0, "marker"),
        ("Sum: 1,141.0 + 93.5. \\boxed{1234.5}", 1.0, "marker"),
        ("Prior year $1,141.0 million; this year **$1,234.5 million**.", 1.0, "bold"),
        ("Last year it was $1,141.0 million. This year it was $1,234.5 million.", 1.0, None),
        ("In Q3 2025 revenue was $1,234.5 million.", 1.0, "last_sentence"),
        ("As of September 30, 2025, revenue was $1,234.5 million.", 1.0, "last_sentence"),
        ("Per the 10-K (2), revenue was $1,234.5 million.", 1.0, "last_sentence"),
        ("1. Revenue: $1,234.5 million", 1.0, "last_sentence"),
        ("(1) Revenue was $1,234.5 million.", 1.0, "last_sentence"),
        ("It was $1,234.5 million (about $1.2 billion).", 1.0, "last_sentence"),
        ("<think>maybe $900 million</think>Answer: $1,234.5 million", 1.0, "marker"),
        ("the 10-K says $1,141.0 million</think>$1,234.5 million", 1.0, "last_sentence"),
        ("Answer: $1,141.0 million, not $1,234.5 million", 0.0, "marker"),  # first after marker
        ("Answer: $1,234.5 million. I hope this answer is helpful, see page 5.", 1.0, "marker"),
        ("Final answer: $1,234.5 million. This answer is based on the 10-Q.", 1.0, "marker"),
        ("The answer is approximately $1,234.5 million", 1.0, "marker"),
        ("Sum = $1,141.0 million + $93.5 million = $1,234.5 million", 1.0, "equation"),
        ("Revenue was $1,234.5 million, up 8.2% from last year.", 1.0, "last_sentence"),
        ("As of 2025-09-30, revenue was $1,234.5 million.", 1.0, "last_sentence"),
    ],
)
def test_the_answer_is_picked_from_prose(answer: str, score: float, picked_by: str | None) -> None:
    result = numeric(answer, "$1,234.5 million", tolerance=0.001)
    assert result.score == score, result.details
    if picked_by is not None:
        assert result.details["picked_by"] == picked_by


@pytest.mark.parametrize(
    "answer",
    [
        "Revenue grew from $1,141.0 million to $1,234.5 million.",
        "It is either $1,141.0 million or $1,234.5 million",
        "1,141.0, 1,234.5, 1,300.2",
        "**$1,141.0 million** or **$1,234.5 million**",
        "The margin was 13.4% against 12.1% a year ago",
        "between 1,200 and 1,250 million",
        "$1,141.0 million + $93.5 million",  # a sum with no result is no answer
    ],
)
def test_several_unmarked_values_are_ambiguous(answer: str) -> None:
    result = numeric(answer, "$1,234.5 million")
    assert (result.score, result.verdict) == (0.0, Verdict.AMBIGUOUS)
    assert len(result.details["candidates"]) >= 2


def test_only_figures_of_the_reference_kind_compete() -> None:
    answer = "Operating income was $167.2 million, a margin of 13.4%."
    assert numeric(answer, "13.4%").score == 1.0
    assert numeric(answer, "$167.2 million").score == 1.0
    assert numeric("The margin was 0.134 (13.4%).", "13.4%").details["answer_text"] == "13.4%"


def test_values_that_agree_are_one_answer() -> None:
    result = numeric("$1,234.5 million (1,234,500,000, or 1234.5 in millions)", MONEY)
    assert result.verdict is Verdict.WRONG  # agreed on 1,234.5 million, which is wrong here
    assert numeric("842.5, i.e. $842.5 million or 842,500,000 dollars").score == 1.0


@pytest.mark.parametrize("answer", ["", "   ", "I could not find it.", "Q3 FY2025 10-K"])
def test_no_figure_is_no_answer(answer: str) -> None:
    result = numeric(answer)
    assert (result.score, result.verdict, result.failed) == (0.0, Verdict.NO_ANSWER, False)


def test_years_are_answers_only_when_alone() -> None:
    assert numeric("In 2024 the count was 17.", "2,024").verdict is Verdict.WRONG
    assert numeric("The figure for 2024 is not reported.", "2,024").score == 1.0  # no other
    assert numeric("2024", "2,024").score == 1.0
    assert numeric("In 2019 it had 3 plants", "3").score == 1.0


@pytest.mark.parametrize(
    ("reference", "message"),
    [("Retail", "no figure"), ("5 or 6", "2 different figures"), (["1", "2"], "spans")],
)
def test_unreadable_reference_is_a_grader_failure(reference: Any, message: str) -> None:
    result = NumericGrader().grade("5", Reference(answer=reference))
    assert result.failed and result.verdict is Verdict.UNPARSEABLE
    assert result.error is not None and message in result.error


@pytest.mark.parametrize("tolerance", [-0.1, 1.0, float("nan"), float("inf")])
def test_bad_default_tolerance_is_refused(tolerance: float) -> None:
    with pytest.raises(GraderConfigError, match="tolerance_rel"):
        NumericGrader(tolerance)


# ---- properties ----

_SCALES = {0: "", 3: " thousand", 6: " million", 9: " billion"}
_SHORT = {0: "", 3: "K", 6: "M", 9: "bn"}


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=1, max_value=999_999),
    st.integers(min_value=0, max_value=2),
    st.sampled_from(sorted(_SCALES)),
    st.booleans(),
)
def test_any_figure_in_any_format_grades_right_against_itself(
    digits: int, decimals: int, scale: int, negative: bool
) -> None:
    mantissa = Decimal(digits).scaleb(-decimals)
    full = mantissa.scaleb(scale)
    sign = "-" if negative else ""
    reference = f"{sign}${mantissa:,f}{_SCALES[scale]}"
    variants = [
        reference,
        f"{sign}{full:,f}",
        f"{sign}USD {mantissa:f}{_SCALES[scale]}",
        f"{'−' if negative else ''}${mantissa:f}{_SHORT[scale]}",
        f"The answer is {sign}${full:f}.",
        f"In Q3 2025 it was **{sign}${mantissa:,f}{_SCALES[scale]}**",
        f"{'(' if negative else ''}${mantissa:,f}{_SCALES[scale]}{')' if negative else ''}",
    ]
    if scale:
        variants.append(f"{sign}{mantissa:f}")  # bare, in the reference's unit
    if scale == 6:
        variants.append(f"{sign}${mantissa.scaleb(-3):f} billion")
    for answer in variants:
        result = numeric(answer, reference, tolerance=0.0)
        assert result.score == 1.0, (answer, reference, result.details)


_PIECES = [
    "Answer:", "the answer is", "**", "$", "€", "(", ")", "-", "−", "=", "≈", "\n", ". ", ", ",
    "1,234.5", "842.5", "0.07", "13.4", "2025", "Q3", "10-K", "%", " million", "bn", " bps",
    "decreased by ", "<think>", "</think>", "\\boxed{", "}", "September 30", " ",
]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=25).map("".join))
def test_any_answer_built_from_answer_parts_grades_cleanly(answer: str) -> None:
    for reference in (MONEY, "13.4%", "(1,234)", "2025"):
        result = numeric(answer, reference)
        assert 0.0 <= result.score <= 1.0 and not result.failed
        assert (result.verdict is Verdict.NO_ANSWER) == (result.details["candidates"] == [])


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-99_999, max_value=99_999), st.integers(min_value=0, max_value=3))
def test_any_percentage_in_any_format_grades_right_against_itself(n: int, decimals: int) -> None:
    points = Decimal(n).scaleb(-decimals)
    reference = f"{points:f}%"
    ratio = points.scaleb(-2)
    for answer in (f"{points:f} percent", f"{points:f} per cent", f"{ratio:f}", f"{points:f}"):
        assert numeric(answer, reference, tolerance=0.0).score == 1.0, (answer, reference)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789 ,.$%()-−*_:\nabQMBkK"), max_size=80))
def test_any_text_grades_without_raising(answer: str) -> None:
    for reference in (MONEY, "13.4%", "(1,234)"):
        result = numeric(answer, reference)
        assert 0.0 <= result.score <= 1.0 and not result.failed


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=10))
def test_judge_scores_parse_in_every_format(k: int) -> None:
    for reply in (f'{{"score": {k}, "reason": "x"}}', f"Score: {k}/10", f"{k} out of 10", f"{k}"):
        parsed = parse_judge_score(reply)
        assert parsed is not None and parsed[0] == pytest.approx(k / 10), reply


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_normalisation_is_idempotent(text: str) -> None:
    once = normalize_answer(text)
    assert normalize_answer(once) == once


# ---- the string grader ----


@pytest.mark.parametrize(
    ("reference", "answer"),
    [
        ("Retail", "retail"),
        ("Retail", "**Retail.**"),
        ("Retail", "Answer: the Retail"),
        ("United States", "  united   STATES "),
        ("U.S. dollars", "US dollars"),
        ("Café Brands", "cafe brands"),
        ("long-term debt", "Long term debt"),
        ("Smith & Jones", "smith and jones"),
        ("1,234", "1234"),
        ("Ｒｅｔａｉｌ", "Retail"),
        ("The Henderson Group", "Henderson Group"),
    ],
)
def test_string_normalised_exact_match(reference: str, answer: str) -> None:
    result = StringGrader().grade(answer, Reference(answer=reference))
    assert (result.score, result.verdict) == (1.0, Verdict.CORRECT), result.details


@pytest.mark.parametrize(
    ("reference", "answer"),
    [
        ("Retail", "Retail and Wholesale"),
        ("Retail", "The segment is Retail"),  # exact on purpose: answer after "Answer:"
        ("1.5", "15"),
        ("5%", "5"),
        ("Henderson", "Hendersen"),
    ],
)
def test_string_mismatch_is_wrong(reference: str, answer: str) -> None:
    assert StringGrader().grade(answer, Reference(answer=reference)).score == 0.0


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("Retail, Wholesale", 1.0),
        ("Wholesale and Retail", 1.0),  # order does not matter
        ("- Wholesale\n- Retail", 1.0),
        ("Answer: Retail; Wholesale; Retail", 1.0),  # repeats count once
        ("Retail", 2 / 3),  # P=1, R=1/2
        ("Retail, Wholesale, Online", 0.8),  # P=2/3, R=1
        ("Retail or Online", 0.5),  # P=1/2, R=1/2
        ("Online", 0.0),
        ("The segments are Retail and Wholesale", 0.8),  # leftover words: one extra span
    ],
)
def test_multi_span_f1(answer: str, score: float) -> None:
    result = StringGrader().grade(answer, Reference(answer=("Retail", "Wholesale")))
    assert result.score == pytest.approx(score), result.details
    expected = {1.0: Verdict.CORRECT, 0.0: Verdict.WRONG}.get(score, Verdict.PARTIAL)
    assert result.verdict is expected


def test_spans_containing_separators_stay_whole() -> None:
    reference = Reference(answer=("Research and Development", "Sales, General & Admin"))
    answer = "Research and Development and Sales, General and Admin"
    assert StringGrader().grade(answer, reference).score == 1.0


def test_string_empty_answer_is_no_answer() -> None:
    result = StringGrader().grade(" Answer: ", Reference(answer="Retail"))
    assert result.verdict is Verdict.NO_ANSWER


def test_span_f1_properties() -> None:
    assert span_f1({"a", "b"}, {"b", "a"}) == 1.0
    assert span_f1({"a"}, {"a", "b"}) == span_f1({"a", "b"}, {"a"})
    assert span_f1(set(), {"a"}) == 0.0


# ---- the LLM judge, against a fake chat-completions endpoint ----


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ('{"score": 8, "reason": "close"}', 0.8),
        ('```json\n{"score": 10, "reason": "same figure"}\n```', 1.0),
        ('{"score": "7/10"}', 0.7),
        ('{"Score": 0.85}', 0.85),
        ("Score: 7/10", 0.7),
        ("**Score:** 9", 0.9),
        ("The rating is 3 out of 4.", 0.75),
        ("0.8", 0.8),
        ("8", 0.8),
        ("80%", 0.8),
        ("Score: 15", 1.0),  # clamped
        ('{"score": -2}', 0.0),
        ("Reasoning: the figures 842.5 and 842 differ slightly. Score: 6/10", 0.6),
        ("<think>score 2</think>Score: 9", 0.9),
    ],
)
def test_judge_reply_parsing(reply: str, score: float) -> None:
    parsed = parse_judge_score(reply)
    assert parsed is not None and parsed[0] == pytest.approx(score)
    judge = judge_with(lambda request: chat_reply(reply))
    grade = asyncio.run(judge.agrade("x", Reference(answer="y")))
    assert grade.score == pytest.approx(score) and not grade.failed, grade
    assert grade.verdict is {1.0: Verdict.CORRECT, 0.0: Verdict.WRONG}.get(score, Verdict.PARTIAL)


@pytest.mark.parametrize(
    "reply", ["I think it is right.", "", '{"reason": "no score"}', "Score: n/a", "7/0"]
)
def test_unreadable_judge_reply_is_a_failure(reply: str) -> None:
    assert parse_judge_score(reply) is None
    grade = judge_with(lambda request: chat_reply(reply)).grade("x", Reference(answer="y"))
    assert grade.failed and grade.verdict is Verdict.UNPARSEABLE and grade.score == 0.0


def chat_reply(content: Any, status: int = 200) -> httpx.Response:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
    }
    return httpx.Response(status, json=body)


def judge_with(handler: Callable[[httpx.Request], httpx.Response], **config: Any) -> JudgeGrader:
    defaults: dict[str, Any] = {
        "base_url": "http://judge.test/v1",
        "model": "judge-model",
        "backoff_s": 0.0,
    }
    return JudgeGrader(JudgeConfig(**(defaults | config)), transport=httpx.MockTransport(handler))


class FakeChatServer:
    """An OpenAI-style /chat/completions endpoint that plays a script of outcomes."""

    def __init__(self, *script: str | int | type[httpx.TransportError]) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path != "/v1/chat/completions" or request.method != "POST":
            return httpx.Response(404, json={"error": "not found"})
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, type):
            raise step("simulated failure", request=request)
        if isinstance(step, int):
            return httpx.Response(step, text="upstream trouble")
        return chat_reply(step)

    def body(self, i: int = 0) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.requests[i].content)
        return data


QUESTION = Reference(answer="$842.5 million", question="What was Q3 revenue?")


def test_judge_sends_a_deterministic_chat_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", "sk-test-123")
    server = FakeChatServer('{"score": 10, "reason": "same figure"}')
    judge = judge_with(server, api_key_env="JUDGE_KEY_FOR_TEST")
    grade = asyncio.run(judge.agrade("Answer: {weird} 842.5 million", QUESTION))
    assert (grade.score, grade.verdict) == (1.0, Verdict.CORRECT)
    assert grade.details["judge_reason"] == "same figure"
    body = server.body()
    assert body["model"] == "judge-model" and body["temperature"] == 0
    prompt = body["messages"][-1]["content"]
    assert "What was Q3 revenue?" in prompt and "$842.5 million" in prompt
    assert "{weird} 842.5 million" in prompt
    assert server.requests[0].headers["authorization"] == "Bearer sk-test-123"


def test_judge_retries_transient_failures_then_succeeds() -> None:
    server = FakeChatServer(503, httpx.ConnectError, '{"score": 5}')
    grade = judge_with(server, max_retries=2).grade("842", QUESTION)
    assert (grade.score, grade.verdict, grade.failed) == (0.5, Verdict.PARTIAL, False)
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("script", "calls", "message"),
    [
        ((500,), 3, "HTTP 500"),
        ((httpx.ConnectError,), 3, "ConnectError"),
        ((httpx.ReadTimeout,), 3, "ReadTimeout"),
        ((400,), 1, "HTTP 400"),  # a client error is not retried
        ((401,), 1, "HTTP 401"),
    ],
)
def test_judge_failure_sets_error_never_a_silent_zero(
    script: tuple[Any, ...], calls: int, message: str
) -> None:
    server = FakeChatServer(*script)
    grade = judge_with(server, max_retries=2).grade("842", QUESTION)
    assert grade.failed and grade.verdict is Verdict.ERROR
    assert grade.error is not None and message in grade.error
    assert len(server.requests) == calls


def test_judge_reply_without_choices_is_a_failure() -> None:
    grade = judge_with(lambda r: httpx.Response(200, json={"oops": 1})).grade("5", QUESTION)
    assert grade.failed and "not a chat-completions reply" in (grade.error or "")


def test_judge_skips_empty_answers_and_needs_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeChatServer('{"score": 10}')
    assert judge_with(server).grade("  ", QUESTION).verdict is Verdict.NO_ANSWER
    assert server.requests == []
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(GraderConfigError, match="NO_SUCH_JUDGE_KEY"):
        judge_with(server, api_key_env="NO_SUCH_JUDGE_KEY")
    with pytest.raises(ValidationError, match="answer"):
        JudgeConfig(base_url="http://x", model="m", rubric="Grade {reference}")


def test_judge_uses_a_shared_client_and_refuses_sync_grade_in_a_loop() -> None:
    server = FakeChatServer('{"score": 10}')

    async def run() -> GradeResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
            judge = make_grader(
                {"type": "judge", "base_url": "http://judge.test/v1", "model": "m"},
                http_client=client,
            )
            with pytest.raises(GraderInputError, match="agrade"):
                judge.grade("5", QUESTION)
            return await judge.agrade("5", QUESTION)

    assert asyncio.run(run()).score == 1.0


# ---- composition ----


def test_composite_weights_are_normalised() -> None:
    grader = CompositeGrader([Part(NumericGrader(), 3.0), Part(StringGrader(), 1.0)])
    result = grader.grade("842.5 million", Reference(answer=MONEY))
    assert result.score == pytest.approx(0.75)  # numeric right (3/4), string wrong (1/4)
    assert [p["weight"] for p in result.details["parts"]] == [0.75, 0.25]
    assert result.verdict is Verdict.PARTIAL


def test_composite_of_full_scores_is_exactly_one() -> None:
    grader = make_grader(
        {
            "type": "composite",
            "parts": [{"grader": "numeric", "weight": 0.7}, {"grader": "auto", "weight": 0.3}],
        }
    )
    result = grader.grade("842.5 million", Reference(answer=MONEY))
    assert (result.score, result.verdict) == (1.0, Verdict.CORRECT)


def test_composite_with_an_unreadable_judge_reply_fails_as_unparseable() -> None:
    judge = judge_with(FakeChatServer("looks fine to me"))
    grader = CompositeGrader([Part(NumericGrader(), 0.5), Part(judge, 0.5)])
    result = grader.grade("842.5 million", Reference(answer=MONEY))
    assert result.failed and result.verdict is Verdict.UNPARSEABLE
    assert [p["verdict"] for p in result.details["parts"]] == ["correct", "unparseable"]


def test_composite_with_a_failed_part_fails() -> None:
    judge = judge_with(FakeChatServer(503), max_retries=0)
    grader = CompositeGrader([Part(NumericGrader(), 0.5), Part(judge, 0.5)])
    result = grader.grade("842.5 million", Reference(answer=MONEY))
    assert result.failed and result.verdict is Verdict.ERROR
    assert result.error is not None and result.error.startswith("judge grader:")


def test_composite_mixes_a_judge_asynchronously() -> None:
    judge = judge_with(FakeChatServer('{"score": 6}'))
    grader = CompositeGrader([Part(NumericGrader(), 1.0), Part(judge, 1.0)])
    result = asyncio.run(grader.agrade("842.5 million", Reference(answer=MONEY)))
    assert result.score == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("used", "score", "missing"),
    [
        ({"search", "read"}, 1.0, []),
        ({"search", "read", "list"}, 1.0, []),
        ({"search"}, 0.5, ["read"]),
        (set(), 0.5, ["read", "search"]),
    ],
)
def test_must_use_tools_penalty(used: set[str], score: float, missing: list[str]) -> None:
    grader = make_grader({"type": "numeric", "tool_policy": {"penalty": 0.5}})
    row = {"reference_answer": MONEY, "expected": {"must_use_tools": ["search", "read"]}}
    result = asyncio.run(grade_row(grader, row, "842.5 million", used))
    assert result.score == score
    assert result.details["tool_use"]["missing"] == missing
    assert result.details["tool_use"]["factor"] == (0.5 if missing else 1.0)


def test_tool_penalty_keeps_rewards_in_range_and_needs_the_tools_used() -> None:
    policy = ToolUsePolicy(penalty=1.0)
    grader = CompositeGrader([Part(NumericGrader(), 1.0)], policy)
    reference = Reference(answer=MONEY, must_use_tools=frozenset({"read"}))
    assert (
        grader.grade("900 million", reference.model_copy(update={"tools_used": frozenset()})).score
        == 0.0
    )
    assert (
        grader.grade("842.5", reference.model_copy(update={"tools_used": frozenset()})).score == 0.0
    )
    with pytest.raises(GraderInputError, match="which were used"):
        grader.grade("842.5", reference)
    assert grader.grade("842.5", Reference(answer=MONEY)).score == 1.0  # nothing required
    with pytest.raises(ValidationError):
        ToolUsePolicy(penalty=1.5)


@pytest.mark.parametrize("weights", [[], [0.0, 0.0], [1.0, -1.0], [float("nan")]])
def test_bad_weights_are_refused(weights: list[float]) -> None:
    with pytest.raises(GraderConfigError):
        CompositeGrader([Part(NumericGrader(), w) for w in weights])


# ---- config ----


def test_make_grader_builds_every_type() -> None:
    assert isinstance(make_grader({"type": "numeric", "tolerance_rel": 0.05}), NumericGrader)
    assert isinstance(make_grader("string"), StringGrader)
    composite = make_grader(
        {
            "type": "composite",
            "parts": [
                {"grader": {"type": "numeric"}, "weight": 0.7},
                {"grader": "string", "weight": 0.3},
            ],
            "tool_policy": {"penalty": 0.25},
        }
    )
    assert isinstance(composite, CompositeGrader)
    assert [p.weight for p in composite.parts] == pytest.approx([0.7, 0.3])
    assert isinstance(composite, Grader)
    assert set(known_grader_types()) >= {"numeric", "string", "auto", "judge", "composite"}
    from_model = make_grader(JudgeSpec(type="judge", base_url="http://judge/v1", model="m"))
    assert isinstance(from_model, JudgeGrader) and from_model.config.model == "m"


def test_make_grader_numeric_tolerance_is_used() -> None:
    loose = make_grader({"type": "numeric", "tolerance_rel": 0.1})
    assert loose.grade("900 million", Reference(answer=MONEY)).score == 1.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "regex"}, "unknown grader type 'regex'; known types: auto, composite"),
        ({}, "unknown grader type None"),
        ({"type": "numeric", "tolerance_rel": 2}, "tolerance_rel"),
        ({"type": "numeric", "tolerence_rel": 0.1}, "tolerence_rel"),
        ({"type": "judge", "model": "m"}, "base_url"),
        ({"type": "composite", "parts": []}, "parts"),
        ({"type": "composite", "parts": [{"grader": {"type": "nope"}}]}, "'nope'"),
        ({"type": "numeric", "tool_policy": {"penalty": 3}}, "penalty"),
        ({"type": "numeric", "tol": 0.1}, "numeric grader: unknown option 'tol' (options: tol"),
        ({"type": "string", "x": 1}, "string grader: unknown option 'x' (options: none)"),
        ({"type": "numeric", "tolerance_rel": True}, "valid number, not True"),  # YAML's `yes`
        ({"type": "auto", "tolerance_rel": "0.1"}, "auto grader: tolerance_rel: Input should"),
        (
            {
                "type": "composite",
                "parts": [{"grader": "string"}, {"grader": {"type": "numeric", "x": 1}}],
            },
            "composite part 1: numeric grader: unknown option 'x'",
        ),
        ({"type": "composite", "parts": [{"grader": "string", "x": 1}]}, "option 'parts.0.x'"),
        ({"type": "composite", "parts": [{"grader": "string", "weight": "heavy"}]}, "weight"),
        ({"type": "numeric", "tool_policy": {"penalti": 1}}, "unknown option 'penalti'"),
        ({"type": "numeric", "tool_policy": {"penalty": True}}, "penalty: Input should be"),
        ({"type": "numeric", "tool_policy": 3}, "tool_policy: Input should be a valid dict"),
        (5, "a grader is a type name or a mapping with a 'type' key, not 5; known types: auto"),
    ],
)
def test_make_grader_errors_say_what_is_wrong(spec: Any, message: str) -> None:
    for check in (make_grader, check_grader_spec):  # at build time and at load time alike
        with pytest.raises(GraderConfigError) as caught:
            check(spec)
        assert message in str(caught.value), check


@pytest.mark.parametrize(
    "spec",
    [
        "auto",
        {"type": "numeric", "tolerance_rel": 0},  # a whole number is a number
        {"type": "auto", "tolerance_rel": 0.01, "tool_policy": {"penalty": 1}},
        {"type": "numeric", "tool_policy": None},
        {
            "type": "composite",
            "parts": [{"grader": "numeric", "weight": 2}, {"grader": {"type": "string"}}],
            "tool_policy": {"penalty": 0.25},
        },
    ],
)
def test_valid_specs_pass_the_check_and_build(spec: Any) -> None:
    check_grader_spec(spec)
    assert isinstance(make_grader(spec), Grader)


def test_the_check_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A judge's key is needed to grade, not to validate a config file listing environments.
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    spec = {"type": "judge", "base_url": "http://judge/v1", "model": "m"}
    check_grader_spec({**spec, "api_key_env": "NO_SUCH_JUDGE_KEY"})
    with pytest.raises(GraderConfigError, match="NO_SUCH_JUDGE_KEY"):
        make_grader({**spec, "api_key_env": "NO_SUCH_JUDGE_KEY"})


def test_register_grader_type() -> None:
    class Always(StringGrader):
        name = "always"

        def grade(self, answer: str, reference: Reference) -> GradeResult:
            return GradeResult(score=1.0, verdict=Verdict.CORRECT)

    if "always-test" not in known_grader_types():
        register_grader_type("always-test", lambda spec, ctx: Always())
    assert make_grader("always-test").grade("x", Reference(answer="y")).score == 1.0
    with pytest.raises(GraderConfigError, match="already registered"):
        register_grader_type("numeric", lambda spec, ctx: Always())


@pytest.mark.parametrize(
    ("reference", "hint", "graded_as"),
    [
        ("$842.5 million", None, "numeric"),
        ("13.4%", None, "numeric"),
        ("(1,234)", None, "numeric"),
        ("Retail", None, "string"),
        ("Q3 2025", None, "string"),
        (["1,234", "5,678"], None, "string"),
        ("2024", "string", "string"),
        ("Henderson 2", "numeric", "numeric"),
    ],
)
def test_auto_grader_chooses_per_row(reference: Any, hint: str | None, graded_as: str) -> None:
    result = make_grader("auto").grade("x", Reference(answer=reference, grader_hint=hint))
    assert result.details["graded_as"] == graded_as


def test_reference_from_a_dataset_row() -> None:
    row = {
        "id": "val-0042",
        "prompt": "What was Henderson Industries' Q3 2025 operating margin?",
        "reference_answer": "13.4%",
        "expected": {"tolerance_rel": 0.02, "must_use_tools": ["search", "read"]},
        "metadata": {"task_type": "numerical_qa", "difficulty": "medium"},
        "grader": "numeric",
    }
    reference = Reference.from_row(row, tools_used=["search"])
    assert reference.question.startswith("What was") and reference.tolerance_rel == 0.02
    assert reference.must_use_tools == {"search", "read"} and reference.tools_used == {"search"}
    assert Reference.from_row({"reference_answer": 842.5}).answer == "842.5"
    assert Reference.from_row({"reference_answer": ["a", "b"]}).spans == ("a", "b")


def test_grade_row_with_a_dataset_row_model() -> None:
    from envs.data.rows import Expected, Row, RowMetadata

    row = Row(
        id="lookup-1",
        prompt="What was Henderson Industries' revenue in Q3 2025?",
        reference_answer="$1,843.3 million",
        expected=Expected(tolerance_rel=0.001, must_use_tools=["search", "read"]),
        metadata=RowMetadata(task_type="lookup", difficulty="easy"),
        grader="numeric",
    )
    grader = make_grader({"type": "auto", "tool_policy": {"penalty": 0.5}})
    done = asyncio.run(grade_row(grader, row, "Answer: $1,843.3 million", {"search", "read"}))
    assert (done.score, done.verdict) == (1.0, Verdict.CORRECT)
    lazy = asyncio.run(grade_row(grader, row, "Answer: $1,843.3 million", set()))
    assert lazy.score == 0.5 and lazy.details["tool_use"]["missing"] == ["read", "search"]
    rounded = asyncio.run(grade_row(grader, row, "$1.84 billion", {"search", "read"}))
    assert rounded.verdict is Verdict.ROUNDING_SLIP  # the row's 0.1% tolerance is tighter


def test_grade_result_keeps_failures_apart_from_wrong_answers() -> None:
    with pytest.raises(ValidationError):
        GradeResult(score=0.0, verdict=Verdict.WRONG, error="judge down")
    with pytest.raises(ValidationError):
        GradeResult(score=0.0, verdict=Verdict.ERROR)
    with pytest.raises(ValidationError):
        GradeResult(score=1.5, verdict=Verdict.CORRECT)
    result = NumericGrader().grade("842.5", Reference(answer=MONEY))
    assert json.loads(result.model_dump_json())["details"]["answer_value"] == "842.5"


# ---- the CLI function ----


@pytest.mark.parametrize(
    ("answer", "last"),
    [
        ("842.5 million", "1.0"),
        ("$842,500,000", "1.0"),
        ("about 842 million", "1.0"),
        ("900 million", "0.0"),
        ("nothing", "0.0"),
    ],
)
def test_grade_command_last_line_is_the_score(answer: str, last: str) -> None:
    text, status = grade_command("$842.5 million", answer, None)
    assert status == 0 and text.splitlines()[-1] == last
    assert text.splitlines()[1].startswith("verdict: ")


def test_grade_command_details_and_failures() -> None:
    text, status = grade_command("13.4%", "13.3%", None)
    assert (text.splitlines()[-1], status) == ("0.5", 0)
    assert "verdict: rounding_slip" in text and "reference: 13.4% = 13.4" in text
    assert grade_command("13.4%", "13.3%", 0.02)[0].splitlines()[-1] == "1.0"
    text, status = grade_command("Retail", "5", None)
    assert status == 2 and text.splitlines()[-1].startswith("error: reference 'Retail'")
    assert grade_command("$5", "5", 1.5)[1] == 2
    assert grade_command("Retail", "retail", None, grader="string")[0].endswith("\n1.0")
