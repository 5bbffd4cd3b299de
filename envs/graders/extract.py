"""Which figure in a free-text answer is the answer, and which figure a reference states.

The answer's figure, in order of preference:
1. The first figure after the last answer label ("Answer:", "Final answer", \\boxed{...});
   else after the last "the answer is" that a figure follows at once ("I hope this answer is
   helpful, see page 5" marks nothing).
2. Otherwise the figures in bold; otherwise those of the last sentence that states a figure
   (earlier sentences are working). These must agree: several different values with none
   marked as the answer is a hedge, graded 0 as "ambiguous". Values that agree (842.5 and
   $842.5 million; $1,234.5 million and about $1.2 billion) count as one, the most precise.
   An equation is its own marker: in "1,234.5 - 1,141.0 = 93.5" the answer is 93.5.
Set aside when other figures exist: years, dates, footnote and list markers ("In Q3 2025 the
margin was 13.4%" is 13.4%; a year counts when the reference is one), and figures of the
other kind than the reference's: against a percentage only percentages compete, against an
amount only amounts ("$842.5 million, up 8.2%" answers $842.5 million). That uses the kind
of the reference, never its value: matching any listed figure would reward hedging.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from envs.graders.base import Verdict
from envs.graders.compare import MORE_PRECISE, Comparison, Tolerance, compare
from envs.graders.errors import GraderError
from envs.graders.numbers import NOISE_KINDS, Kind, Quantity, find_quantities, prepare
from envs.graders.text import (
    answer_regions,
    bold_regions,
    equation_result_start,
    inside,
    sentence_regions,
    strip_reasoning,
)

MAX_ANCHORS = 4


class UnreadableReferenceError(GraderError):
    """The reference does not state exactly one figure."""


class PickedBy(StrEnum):
    MARKER = "marker"
    BOLD = "bold"
    LAST_SENTENCE = "last_sentence"
    EQUATION = "equation"


@dataclass(frozen=True)
class Pick:
    quantity: Quantity | None  # None: no figure, or an ambiguous one
    ambiguous: bool = False
    picked_by: PickedBy | None = None
    candidates: tuple[Quantity, ...] = field(default_factory=tuple)  # those considered


def pick_answer(
    text: str, tolerance: Tolerance, keep_years: bool = False, want_percent: bool | None = None
) -> Pick:
    """The figure `text` gives as its answer (see the module doc). `want_percent`: the kind
    of figure asked for, when known (a percentage or not); others are then set aside."""
    text = strip_reasoning(prepare(text))
    found = _of_kind(_without_noise(find_quantities(text), keep_years), want_percent)
    if not found:
        return Pick(None)
    for start, end in answer_regions(text, figure_follows=True):
        marked = _within(found, start, end)
        if marked:
            return Pick(marked[0], picked_by=PickedBy.MARKER, candidates=tuple(marked))
    emphasised = bold_regions(text)
    bold = [q for q in found if inside(emphasised, q.start)]
    if bold:
        return _agreed(bold, tolerance, PickedBy.BOLD)
    last = found[-1].start
    start, end = next((s, e) for s, e in sentence_regions(text) if s <= last < e)
    pool = _within(found, start, end)
    pick = _agreed(pool, tolerance, PickedBy.LAST_SENTENCE)
    result_start = equation_result_start(text, start, end) if pick.ambiguous else None
    results = [q for q in pool if result_start is not None and q.start >= result_start]
    if results:  # "93.5 = 1,234.5 - 1,141.0" is no result, "1,234.5 - 1,141.0 = 93.5" is
        return Pick(results[0], picked_by=PickedBy.EQUATION, candidates=tuple(pool))
    return pick


def read_reference(text: str) -> Quantity:
    """The one figure a reference states; raises UnreadableReferenceError otherwise."""
    found = _without_noise(find_quantities(prepare(text)), keep_years=False)
    values = {q.value for q in found}
    if len(values) != 1:
        what = "no figure" if not found else f"{len(values)} different figures"
        raise UnreadableReferenceError(f"reference {text!r} states {what}; it needs exactly one")
    return found[0]


def is_numeric_reference(text: str) -> bool:
    """True when the whole reference is one figure ("$842.5 million", "13.4%", "(1,234)")."""
    normal = prepare(text).strip().rstrip(".")
    found = find_quantities(normal)
    if len(found) != 1:
        return False
    q = found[0]
    rest = normal[: q.start] + normal[q.end :]
    return not rest.strip(" ()*_~")


def _within(found: Sequence[Quantity], start: int, end: int) -> list[Quantity]:
    return [q for q in found if start <= q.start < end]


def _of_kind(found: list[Quantity], want_percent: bool | None) -> list[Quantity]:
    if want_percent is None:
        return found
    return [q for q in found if q.percent == want_percent] or found


def _without_noise(found: list[Quantity], keep_years: bool) -> list[Quantity]:
    noise = NOISE_KINDS - {Kind.YEAR} if keep_years else NOISE_KINDS
    figures = [q for q in found if q.kind not in noise]
    return figures or found


def _agreed(pool: list[Quantity], tolerance: Tolerance, picked_by: PickedBy) -> Pick:
    """One value if every figure in `pool` agrees with one of them, else ambiguous.

    The anchor is the most informative figure (stated unit, then precision); a few are tried
    so that "842.5, $842.5 million, 842,500,000 dollars" agree through the one with a scale.
    """
    ranked = sorted(pool, key=_informative, reverse=True)
    for anchor in ranked[:MAX_ANCHORS]:
        if all(q is anchor or _agree(q, anchor, tolerance) for q in pool):
            return Pick(anchor, picked_by=picked_by, candidates=tuple(pool))
    return Pick(None, ambiguous=True, picked_by=picked_by, candidates=tuple(pool))


def _informative(q: Quantity) -> tuple[bool, bool, int, int]:
    return (q.explicit_scale or q.percent, q.has_unit, q.sig_digits, q.start)


def _agree(a: Quantity, b: Quantity, tolerance: Tolerance) -> bool:
    """Whether `a` and `b` state one value: equal, within tolerance, or one is the other
    rounded ("$1,234.5 million (about $1.2 billion)"). Rounding costs credit against a
    reference, but between two figures of one answer it is no disagreement."""
    return _same(compare(a, b, tolerance)) or _same(compare(b, a, tolerance))


def _same(found: Comparison) -> bool:
    return found.verdict is Verdict.CORRECT or found.rule == MORE_PRECISE
