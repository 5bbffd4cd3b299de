"""The "auto" grader: numeric or string, chosen per row.

The row's `grader` field decides when set ("numeric"; "string" or "spans"). Otherwise a
reference that is one figure and nothing else ("$842.5 million", "13.4%") is graded as a
number, and anything else (names, several spans) as a string.
"""

from __future__ import annotations

from envs.graders.base import GradeResult, Reference, SyncGrader
from envs.graders.extract import is_numeric_reference
from envs.graders.numeric import DEFAULT_TOLERANCE_REL, NumericGrader
from envs.graders.string import StringGrader

NUMERIC_HINTS = frozenset({"numeric"})
STRING_HINTS = frozenset({"string", "spans"})


class AutoGrader(SyncGrader):
    name = "auto"

    def __init__(
        self, tolerance_rel: float = DEFAULT_TOLERANCE_REL, require_unit: bool = False
    ) -> None:
        self.numeric = NumericGrader(tolerance_rel, require_unit)
        self.string = StringGrader()

    def choose(self, reference: Reference) -> SyncGrader:
        hint = (reference.grader_hint or "").lower()
        if hint in NUMERIC_HINTS:
            return self.numeric
        if hint in STRING_HINTS:
            return self.string
        one_figure = len(reference.spans) == 1 and is_numeric_reference(reference.spans[0])
        return self.numeric if one_figure else self.string

    def grade(self, answer: str, reference: Reference) -> GradeResult:
        grader = self.choose(reference)
        result = grader.grade(answer, reference)
        details = {**result.details, "graded_as": grader.name}
        return result.model_copy(update={"details": details})
