"""The numeric grader: the answer's figure against the reference's, within a tolerance.

Which figure is the answer: `envs.graders.extract`. How figures compare (units, percentages,
rounding slips): `envs.graders.compare`. Tolerance: the row's `tolerance_rel` when it sets
one (it then covers percentages too), else this grader's default (amounts only).
`require_unit`: the answer must state the scale or percent sign the reference states.
"""

from __future__ import annotations

import math
from typing import Any

from envs.graders.base import GradeResult, Reference, SyncGrader, Verdict, failure
from envs.graders.compare import Comparison, Tolerance, compare
from envs.graders.errors import GraderConfigError
from envs.graders.extract import Pick, UnreadableReferenceError, pick_answer, read_reference
from envs.graders.numbers import Kind, Quantity

DEFAULT_TOLERANCE_REL = 0.02
MAX_CANDIDATES_SHOWN = 10


def check_tolerance(value: float, what: str = "tolerance_rel") -> float:
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise GraderConfigError(f"{what} must be a fraction in [0, 1), e.g. 0.02; got {value!r}")
    return float(value)


class NumericGrader(SyncGrader):
    name = "numeric"

    def __init__(
        self, tolerance_rel: float = DEFAULT_TOLERANCE_REL, require_unit: bool = False
    ) -> None:
        self.tolerance_rel = check_tolerance(tolerance_rel)
        self.require_unit = require_unit

    def tolerance_for(self, reference: Reference) -> Tolerance:
        if reference.tolerance_rel is not None:
            return Tolerance.of(reference.tolerance_rel, explicit=True)
        return Tolerance.of(self.tolerance_rel, explicit=False)

    def grade(self, answer: str, reference: Reference) -> GradeResult:
        if len(reference.spans) != 1:
            return failure(
                Verdict.UNPARSEABLE,
                f"the numeric grader needs one reference figure, got {len(reference.spans)} "
                "spans; grade multi-span answers with the string grader",
            )
        try:
            expected = read_reference(reference.spans[0])
        except UnreadableReferenceError as exc:
            return failure(Verdict.UNPARSEABLE, str(exc), reference_text=reference.spans[0])
        tolerance = self.tolerance_for(reference)
        keep_years = expected.kind is Kind.YEAR
        pick = pick_answer(answer, tolerance, keep_years, want_percent=expected.percent)
        details = _base_details(expected, tolerance, pick) | {"unit_required": self.require_unit}
        if pick.quantity is None:
            verdict = Verdict.AMBIGUOUS if pick.ambiguous else Verdict.NO_ANSWER
            return GradeResult(score=0.0, verdict=verdict, details=details)
        found = compare(pick.quantity, expected, tolerance, self.require_unit)
        details |= _comparison_details(pick.quantity, found)
        return GradeResult(score=found.score, verdict=found.verdict, details=details)


def _base_details(expected: Quantity, tolerance: Tolerance, pick: Pick) -> dict[str, Any]:
    shown = pick.candidates[:MAX_CANDIDATES_SHOWN]
    return {
        "reference_text": expected.text,
        "reference_value": _plain(expected.value),
        "reference_percent": expected.percent,
        "tolerance_rel": float(tolerance.rel),
        "tolerance_covers_percent": tolerance.for_percent,
        "picked_by": None if pick.picked_by is None else pick.picked_by.value,
        "candidates": [q.text for q in shown],
    }


def _comparison_details(answer: Quantity, found: Comparison) -> dict[str, Any]:
    return {
        "answer_text": answer.text,
        "answer_value": _plain(answer.value),
        "answer_percent": answer.percent,
        "compared_as": "percentage points" if found.percent else "amount",
        "reading": found.reading,
        "rule": found.rule,
        "compared_answer": _plain(found.answer_value),
        "compared_reference": _plain(found.reference_value),
        "abs_error": _plain(found.abs_error),
        "relative_error": found.rel_error,
    }


def _plain(value: Any) -> str:
    """A Decimal as plain digits (842500000, not 8.425E+8), for details and the CLI."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
