"""Exception tree of the graders.

GraderError
├── GraderConfigError   a grader spec or setting that cannot work (unknown type, bad weight)
├── GraderInputError    the caller passed something a grader cannot grade (a bug upstream)
├── UnreadableReferenceError  (extract; internal) the reference states no single figure
└── JudgeUnavailableError     (judge; internal) no usable reply from the judge endpoint

A wrong or missing answer is never an exception: it is a verdict with a score. A grader that
cannot reach a verdict (judge unreachable, reference without a number) returns a GradeResult
with `error` set, so the failure is recorded instead of being folded into a zero reward.
"""

from __future__ import annotations


class GraderError(Exception):
    """Base of every error this package raises on purpose."""


class GraderConfigError(GraderError, ValueError):
    """A grader spec or setting is invalid; the message names what is accepted."""


class GraderInputError(GraderError, ValueError):
    """A grader was called with input it cannot grade, e.g. no record of the tools used."""
