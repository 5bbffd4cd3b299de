"""Is an answer's figure the reference's figure? The rules, in one place.

Units. The reference is the authority on units. Only the answer may leave its unit out: an
answer figure without one is read both as written and in the reference's unit, and the
better reading counts. A reference is always read as written. With `require_unit`, an
answer is read only as written, so a figure that leaves out the scale or percent sign the
reference states is wrong (rule "unit_missing"); written out in full ("842,500,000") it is
still right. Use it where the task asks for the unit: otherwise a policy trained against
the grader learns that leaving the scale out never costs anything.
- "842.5" against "$842.5 million" is 842.5 million (filings state "in millions" once), and
  "842,500,000" is the same figure written out. An explicit, different magnitude
  ("842.5 billion") or currency (€ against $) is wrong.
- Money is not a count: an amount against "336.3 million shares", or a figure counting shares
  ("$125.9 shares", "125.9 shares") against "$125.9 million", is wrong. Leaving the scale out
  is leaving a unit out; naming another unit is not (GRPO on the demo found that "$125.9
  shares" scored as "$125.9 million" and learnt to write it, 2026-12-01).
- Percentages are compared in percentage points. Against "7%", the answer "0.07" is the ratio
  (7 points) and "7" is read in the reference's unit (7 points): both are right.
- Against a plain reference "0.07", the answer "7%" is right: 7% is 0.07. But "0.07%" is
  wrong (it is 0.0007), and against a plain "13.4" the answer "13.4%" is wrong: a plain
  reference is a plain number, so a dataset must write percentages with their sign.
- A negative reference also accepts a positive figure introduced by a decrease word
  ("decreased by 3.2%", "a loss of $5 million", "down 4%").

Credit, with d the absolute difference (exact decimals; "unit" is one in the last shown digit):
- 1.0, correct: the same value however written (13.4%, 0.134, 13.40%: a trailing zero states
  no digit that disagrees), or d within the relative tolerance. The tolerance applies to
  amounts; for percentages only when set explicitly (the row's): 2% of 13.4% is 0.27 points,
  which would pass 13.2% for a reported 13.4% margin. A percentage rounded to 0.1 point or
  finer that rounds correctly (13.4% for 13.4271%) is also correct: fewer digits than the
  reference, none of them wrong.
- 0.5, rounding_slip: one of
  - more digits than the reference: the answer states a digit the reference does not and
    rounds to it at the reference's precision (13.41% for 13.4%: 0 < d <= unit_ref / 2).
    Only outside the tolerance, so $842.53 million for $842.5 million stays correct under
    the default 2%, as $845 million does.
  - too coarse: the reference rounds to the answer but the answer shows fewer digits than
    the tolerance allows (13% for 13.4%; 1,234 for 1,234.5 under a 0.01% tolerance), with at
    least 2 significant digits;
  - a percentage within 0.1 point (13.3% for 13.4%);
  - one unit off in the last shown digit of the coarser figure when it shows at least 3
    significant digits (1,234.4 for 1,234.5 under a tight tolerance).
  So "$0.8 billion" for $842.5 million and 12 for 13 get nothing: one digit of change there
  is no slip.
- 0.0, wrong: anything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal

from envs.graders.base import Verdict
from envs.graders.numbers import Quantity

TENTH_OF_A_POINT = Decimal("0.1")
MORE_PRECISE = "more_precise_than_reference"  # the rule name: the answer rounds to the reference
IN_REFERENCE_UNIT = "answer_in_reference_unit"  # a bare figure read in the reference's unit
_HALF = Decimal("0.5")


@dataclass(frozen=True)
class Tolerance:
    rel: Decimal
    for_percent: bool  # set explicitly (by the row or the caller), so it covers percentages

    @classmethod
    def of(cls, rel: float, explicit: bool) -> Tolerance:
        return cls(Decimal(repr(float(rel))), explicit)


@dataclass(frozen=True)
class Reading:
    """A quantity on the scale of a comparison (base units, or percentage points)."""

    value: Decimal
    unit: Decimal
    sig_digits: int


@dataclass(frozen=True)
class Comparison:
    score: float
    verdict: Verdict
    rule: str  # which rule decided: "equal", "tolerance", "tenth_of_a_point" ...
    reading: str  # "literal", "answer_in_reference_unit", "reference_in_answer_unit" ...
    answer_value: Decimal
    reference_value: Decimal
    percent: bool

    @property
    def abs_error(self) -> Decimal:
        return abs(self.answer_value - self.reference_value)

    @property
    def rel_error(self) -> float | None:
        if self.reference_value == 0:
            return None
        return float(self.abs_error / abs(self.reference_value))


def compare(
    answer: Quantity, reference: Quantity, tolerance: Tolerance, require_unit: bool = False
) -> Comparison:
    """The best reading of `answer` against `reference` (literal wins ties); with
    `require_unit`, only the readings as written count (see the module doc)."""
    found = [
        _compare_reading(answer, reference, name, a, r, percent, tolerance)
        for name, a, r, percent in _readings(answer, reference)
    ]
    lenient = max(found, key=_score)  # max keeps the first of equals: the literal reading
    if not require_unit:
        return lenient
    best = max((c for c in found if not c.reading.endswith(IN_REFERENCE_UNIT)), key=_score)
    if best.score == 0.0 < lenient.score:
        return replace(best, rule="unit_missing")  # right only in the unit it left out
    return best


def _score(c: Comparison) -> float:
    return c.score


def _compare_reading(
    answer: Quantity,
    reference: Quantity,
    name: str,
    a: Reading,
    r: Reading,
    percent: bool,
    tolerance: Tolerance,
) -> Comparison:
    score, verdict, rule = judge(a, r, percent, tolerance)
    if answer.currency and reference.currency and answer.currency != reference.currency:
        score, verdict, rule = 0.0, Verdict.WRONG, "currency_mismatch"
    if _money_against_count(answer, reference) or _money_against_count(reference, answer):
        score, verdict, rule = 0.0, Verdict.WRONG, "unit_mismatch"
    return Comparison(score, verdict, rule, name, a.value, r.value, percent)


def judge(
    a: Reading, r: Reading, percent: bool, tolerance: Tolerance
) -> tuple[float, Verdict, str]:
    """Score one reading of the answer `a` against the reference `r` (see the module doc)."""
    d = abs(a.value - r.value)
    if d == 0:
        return 1.0, Verdict.CORRECT, "equal"
    if (not percent or tolerance.for_percent) and d <= tolerance.rel * abs(r.value):
        return 1.0, Verdict.CORRECT, "tolerance"
    if d <= r.unit * _HALF:
        # Both values lie on their own grid of powers of ten, so 0 < d < unit_ref means the
        # answer is the finer one: it states a digit the reference does not (13.41% for 13.4%).
        return 0.5, Verdict.ROUNDING_SLIP, MORE_PRECISE
    if percent and a.unit <= TENTH_OF_A_POINT and d <= a.unit * _HALF:
        return 1.0, Verdict.CORRECT, "percent_rounding"
    if d <= a.unit * _HALF and a.sig_digits >= 2:
        return 0.5, Verdict.ROUNDING_SLIP, "coarse_rounding"
    if percent and d <= TENTH_OF_A_POINT:
        return 0.5, Verdict.ROUNDING_SLIP, "tenth_of_a_point"
    coarser = a if a.unit > r.unit else r
    if d <= coarser.unit and coarser.sig_digits >= 3:
        return 0.5, Verdict.ROUNDING_SLIP, "last_digit"
    return 0.0, Verdict.WRONG, "outside_tolerance"


def _readings(
    answer: Quantity, reference: Quantity
) -> Iterator[tuple[str, Reading, Reading, bool]]:
    answers = [("", answer)]
    if reference.mantissa < 0 < answer.mantissa and answer.decrease_worded:
        answers.append(("sign_from_wording+", answer.negated()))
    percent = answer.percent or reference.percent
    for tag, a in answers:
        yield f"{tag}literal", _read(a, percent), _read(reference, percent), percent
        if _bare_against(a, reference):
            yield (
                f"{tag}{IN_REFERENCE_UNIT}",
                _read(_in_unit_of(a, reference), percent),
                _read(reference, percent),
                percent,
            )


def _money_against_count(money: Quantity, count: Quantity) -> bool:
    return money.currency is not None and count.counts is not None


def _bare_against(q: Quantity, other: Quantity) -> bool:
    """Whether `q` states no unit that `other` states, so it may be read in other's unit."""
    if other.percent:
        return not q.has_unit
    return other.explicit_scale and not (q.percent or q.explicit_scale)


def _in_unit_of(q: Quantity, other: Quantity) -> Quantity:
    return replace(q, exponent=other.exponent, percent=other.percent, explicit_scale=True)


def _read(q: Quantity, percent: bool) -> Reading:
    """On the comparison's scale: percentage points when either side is a percentage."""
    shift = 2 if percent and not q.percent else 0  # a plain ratio 0.134 is 13.4 points
    return Reading(q.value.scaleb(shift), q.unit.scaleb(shift), q.sig_digits)
