"""Graders: an answer text and its reference in, a reward in [0, 1] with a verdict out.

    from envs.graders import Reference, make_grader
    grader = make_grader({"type": "numeric", "tolerance_rel": 0.02})
    result = grader.grade("Answer: $842.5 million", Reference(answer="$842.5 million"))
    result.score, result.verdict, result.details   # 1.0, Verdict.CORRECT, {...}

`result.failed` (error set) means the grader could not grade: not a zero reward. From an
environment: `await grade_row(grader, row, answer, tools_used)`.
"""

from envs.graders.auto import AutoGrader
from envs.graders.base import (
    Grader,
    GradeResult,
    Reference,
    SyncGrader,
    Verdict,
    grade_row,
)
from envs.graders.command import grade_command
from envs.graders.compose import CompositeGrader, Part, ToolUsePolicy
from envs.graders.errors import GraderConfigError, GraderError, GraderInputError
from envs.graders.judge import JudgeConfig, JudgeGrader, parse_judge_score
from envs.graders.numeric import NumericGrader
from envs.graders.registry import (
    check_grader_spec,
    known_grader_types,
    make_grader,
    register_grader_type,
)
from envs.graders.string import StringGrader, normalize_answer

__all__ = [
    "AutoGrader",
    "CompositeGrader",
    "GradeResult",
    "Grader",
    "GraderConfigError",
    "GraderError",
    "GraderInputError",
    "JudgeConfig",
    "JudgeGrader",
    "NumericGrader",
    "Part",
    "Reference",
    "StringGrader",
    "SyncGrader",
    "ToolUsePolicy",
    "Verdict",
    "check_grader_spec",
    "grade_command",
    "grade_row",
    "known_grader_types",
    "make_grader",
    "normalize_answer",
    "parse_judge_score",
    "register_grader_type",
]
