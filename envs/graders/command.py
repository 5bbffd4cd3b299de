"""`toolgym grade`: grade one answer against one reference and print the score.

`grade_command` returns the text to print and the exit status. The last line is the score
("1.0", "0.5", "0.0") when the grade succeeded (status 0); lines before it give the verdict
and the figures compared. When the grader cannot grade (a reference without a figure, a bad
tolerance) the last line is "error: ..." and the status is 2; `toolgym grade` then prints
only that error, as "toolgym: error: ..." on stderr like the CLI's other errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envs.graders.base import GradeResult, Reference
from envs.graders.errors import GraderConfigError
from envs.graders.registry import make_grader

EXIT_OK = 0
EXIT_GRADER_FAILED = 2
COMMAND_GRADERS = ("numeric", "string", "auto")


def format_score(score: float) -> str:
    return repr(round(score, 4))


def grade_command(
    reference: str | Sequence[str],
    answer: str,
    tolerance_rel: float | None = None,
    grader: str = "numeric",
    require_unit: bool = False,
) -> tuple[str, int]:
    """Grade `answer` against `reference`; returns (text to print, exit status)."""
    spec: dict[str, Any] = {"type": grader}
    if require_unit:
        spec["require_unit"] = True  # refused by the string grader, as it should be
    try:
        if grader not in COMMAND_GRADERS:
            raise GraderConfigError(f"grader must be one of {', '.join(COMMAND_GRADERS)}")
        if tolerance_rel is not None and not (0.0 <= tolerance_rel < 1.0):
            raise GraderConfigError(f"tolerance must be in [0, 1), e.g. 0.02; got {tolerance_rel}")
        spans = reference if isinstance(reference, str) else tuple(reference)
        result = make_grader(spec).grade(
            answer, Reference(answer=spans, tolerance_rel=tolerance_rel)
        )
    except GraderConfigError as exc:
        return f"error: {exc}", EXIT_GRADER_FAILED
    lines = [f"grader: {grader}", f"verdict: {result.verdict.value}", *_detail_lines(result)]
    if result.failed:
        return "\n".join([*lines, f"error: {result.error}"]), EXIT_GRADER_FAILED
    return "\n".join([*lines, format_score(result.score)]), EXIT_OK


def _detail_lines(result: GradeResult) -> list[str]:
    d = result.details
    lines = []
    if "answer_text" in d:
        lines.append(f"answer: {d['answer_text']} = {d['answer_value']}")
    elif d.get("candidates"):
        lines.append(f"answer candidates: {', '.join(d['candidates'])}")
    if "reference_text" in d and "reference_value" in d:
        lines.append(f"reference: {d['reference_text']} = {d['reference_value']}")
    if "rule" in d:
        rel = d["relative_error"]
        shown = "n/a" if rel is None else f"{rel:.4%}"
        lines.append(f"compared as {d['compared_as']} ({d['reading']}): {d['rule']}")
        lines.append(f"relative error: {shown} ({_tolerance_note(d)})")
    if "answer_normalized" in d:
        lines.append(f"answer normalized: {d['answer_normalized']!r}")
        lines.append(f"reference normalized: {d['reference_normalized']!r}")
    if "f1" in d:
        lines.append(f"spans: {d['answer_spans']} vs {d['reference_spans']} (F1 {d['f1']:.3f})")
    return lines


def _tolerance_note(d: dict[str, Any]) -> str:
    # Without an explicit --tolerance-rel the default tolerance covers amounts only; saying so
    # explains why 13.41% for 13.4% (0.07% off) is not simply correct.
    note = f"tolerance {d['tolerance_rel']:.4%}"
    if d["compared_as"] == "percentage points" and not d["tolerance_covers_percent"]:
        return f"{note} for amounts; none for percentages unless set"
    return note
