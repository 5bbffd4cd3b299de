"""`require_unit`: an answer must state the scale or percent sign its reference states.

Without it a bare figure is also read in the reference's unit ("842.5" against "$842.5
million" is right); GRPO on the demo learnt to drop the scale word for that reason.
"""

from __future__ import annotations

import pytest
import yaml

from envs.graders import (
    GraderConfigError,
    NumericGrader,
    Reference,
    Verdict,
    check_grader_spec,
    grade_command,
    make_grader,
)


def strict(answer: str, reference: str, tolerance: float | None = None) -> tuple[float, str]:
    result = NumericGrader(require_unit=True).grade(
        answer, Reference(answer=reference, tolerance_rel=tolerance)
    )
    return result.score, result.details.get("rule", "")


@pytest.mark.parametrize(
    ("reference", "answer", "lenient", "required"),
    [
        ("$842.5 million", "842.5", 1.0, 0.0),  # the scale left out
        ("$842.5 million", "$842.5", 1.0, 0.0),
        ("$842.5 million", "Answer: $842.5", 1.0, 0.0),
        ("$842.5 million", "842.53", 1.0, 0.0),  # within tolerance in the left-out unit
        ("13.4%", "13.41", 0.5, 0.0),  # a slip, read in the left-out unit
        ("13.4%", "13.4", 1.0, 0.0),  # the percent sign left out
        ("7%", "7", 1.0, 0.0),
    ],
)
def test_a_figure_without_the_reference_unit_is_wrong_when_the_unit_is_required(
    reference: str, answer: str, lenient: float, required: float
) -> None:
    assert NumericGrader().grade(answer, Reference(answer=reference)).score == lenient
    score, rule = strict(answer, reference)
    assert (score, rule) == (required, "unit_missing")


@pytest.mark.parametrize(
    ("reference", "answer", "score"),
    [
        ("$842.5 million", "$842.5 million", 1.0),
        ("$842.5 million", "842.5 million", 1.0),  # the currency is not the scale
        ("$842.5 million", "842,500,000", 1.0),  # written out: it states the value
        ("$842.5 million", "$0.8425 billion", 1.0),
        ("$842.5 million", "$842.53 million", 1.0),  # the default tolerance still applies
        ("$842.5 million", "842.5 thousand", 0.0),  # an explicit, wrong scale is still wrong
        ("13.4%", "13.4%", 1.0),
        ("13.4%", "0.134", 1.0),  # the ratio is the value
        ("13.4%", "13.41%", 0.5),  # a rounding slip keeps its half credit
        ("13.4", "13.4", 1.0),  # a plain reference states no unit to leave out
        ("1,234", "1,234", 1.0),
    ],
)
def test_answers_that_state_the_value_grade_as_before(
    reference: str, answer: str, score: float
) -> None:
    assert strict(answer, reference)[0] == score
    assert NumericGrader().grade(answer, Reference(answer=reference)).score == score


def test_a_bare_figure_wrong_in_any_unit_keeps_its_own_rule() -> None:
    assert strict("123.6", "$842.5 million") == (0.0, "outside_tolerance")


def test_the_option_comes_from_config_and_reaches_auto_rows() -> None:
    spec = yaml.safe_load("{type: auto, require_unit: true}")
    check_grader_spec(spec)
    grader = make_grader(spec)
    result = grader.grade("Answer: 842.5", Reference(answer="$842.5 million"))
    assert (result.score, result.verdict) == (0.0, Verdict.WRONG)
    assert result.details["unit_required"] is True
    assert result.details["rule"] == "unit_missing"
    names = grader.grade("Acme Corp", Reference(answer="Acme Corp"))  # strings: unaffected
    assert names.score == 1.0
    assert make_grader({"type": "numeric"}).grade("842.5", Reference(answer="$842.5 million")).score


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "numeric", "require_unit": "yes"}, "require_unit"),
        ({"type": "numeric", "require_unit": 1}, "require_unit"),
        ({"type": "string", "require_unit": True}, "unknown option 'require_unit'"),
    ],
)
def test_a_bad_require_unit_is_refused_in_one_line(spec: dict[str, object], message: str) -> None:
    with pytest.raises(GraderConfigError, match=message) as caught:
        check_grader_spec(spec)
    assert "\n" not in str(caught.value)


def test_grade_command_takes_the_option() -> None:
    text, status = grade_command("$842.5 million", "842.5", None, require_unit=True)
    assert status == 0
    assert text.splitlines()[-1] == "0.0"
    assert "unit_missing" in text
    assert grade_command("$842.5 million", "842.5", None)[0].splitlines()[-1] == "1.0"
