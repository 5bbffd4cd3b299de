"""What every grader shares: the reference it grades against, the result, the protocol.

A grade is a reward in [0, 1] plus a verdict and JSON-ready details. `error` is set only when
the grader itself failed (judge unreachable, reference unreadable): such a result is not a
wrong answer, and consumers must check `failed` before using `score`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from envs.graders.errors import GraderInputError

if TYPE_CHECKING:
    from envs.data.rows import Row

T = TypeVar("T")


class Verdict(StrEnum):
    CORRECT = "correct"
    PARTIAL = "partial"  # some credit: span-set F1, or a judge score between 0 and 1
    # Right figure at some precision: rounded too coarsely, one off in the last shown digit,
    # or more digits than the reference states (13.41% for 13.4%).
    ROUNDING_SLIP = "rounding_slip"
    WRONG = "wrong"
    AMBIGUOUS = "ambiguous"  # several different values and none marked as the answer
    NO_ANSWER = "no_answer"
    # The two below are grader failures: `error` says why and the score means nothing.
    UNPARSEABLE = "unparseable"  # the reference or the judge's reply could not be read
    ERROR = "error"  # the grader could not run (judge unreachable, 5xx after retries)


FAILURE_VERDICTS = frozenset({Verdict.UNPARSEABLE, Verdict.ERROR})


class GradeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    score: float = Field(ge=0.0, le=1.0)
    verdict: Verdict
    details: dict[str, Any] = Field(default_factory=dict)  # JSON-ready values only
    error: str | None = None

    @model_validator(mode="after")
    def _failure_is_explicit(self) -> GradeResult:
        # Keep "the grader failed" and "the answer is wrong" impossible to confuse.
        failed_verdict = self.verdict in FAILURE_VERDICTS
        if (self.error is not None) != failed_verdict:
            raise ValueError("error must be set exactly when the verdict is a grader failure")
        if failed_verdict and self.score != 0.0:
            raise ValueError("a failed grade carries score 0.0; read `error` instead")
        return self

    @property
    def failed(self) -> bool:
        """True when the grader could not grade; `score` is then not a reward."""
        return self.error is not None


def verdict_for(score: float) -> Verdict:
    """correct at 1, wrong at 0, partial in between."""
    if score >= 1.0:
        return Verdict.CORRECT
    return Verdict.PARTIAL if score > 0.0 else Verdict.WRONG


def failure(verdict: Verdict, error: str, **details: Any) -> GradeResult:
    """A grader failure (verdict UNPARSEABLE or ERROR) with its reason."""
    return GradeResult(score=0.0, verdict=verdict, details=details, error=error)


class Reference(BaseModel):
    """What an answer is graded against: the row's reference and expectations, plus the
    facts of the episode a grader may need (the tools it used)."""

    model_config = ConfigDict(frozen=True)

    answer: str | tuple[str, ...]  # several strings: a multi-span answer
    question: str = ""
    tolerance_rel: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)  # row's
    must_use_tools: frozenset[str] = frozenset()
    tools_used: frozenset[str] | None = None  # None: not known (e.g. a standalone grade)
    grader_hint: str | None = None  # the row's "grader" field: numeric, string or spans

    @field_validator("answer", mode="before")
    @classmethod
    def _numbers_as_text(cls, value: Any) -> Any:
        # JSON rows may carry a bare number; graders read text, as the model writes it.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return repr(value)
        if isinstance(value, list):
            return tuple(value)
        return value

    @property
    def spans(self) -> tuple[str, ...]:
        return (self.answer,) if isinstance(self.answer, str) else self.answer

    @property
    def text(self) -> str:
        """The reference as one string (spans joined), for display and the judge."""
        return "; ".join(self.spans)

    @classmethod
    def from_row(
        cls, row: Row | Mapping[str, Any], tools_used: Iterable[str] | None = None
    ) -> Reference:
        """From a dataset row: an `envs.data.rows.Row` or its JSON dict."""
        data: Mapping[str, Any] = row if isinstance(row, Mapping) else row.model_dump()
        if data.get("reference_answer") is None:
            # An unlabelled row: there is nothing to grade against, and no score to make up.
            raise GraderInputError(
                f"row {data.get('id', '?')!r} has no reference_answer: the grader cannot grade "
                "it (score unlabelled rows with a judge alone: RULER, reward.grader 0)"
            )
        expected = data.get("expected") or {}
        return cls(
            answer=data["reference_answer"],
            question=data.get("prompt", ""),
            tolerance_rel=expected.get("tolerance_rel"),
            must_use_tools=frozenset(expected.get("must_use_tools") or ()),
            tools_used=None if tools_used is None else frozenset(tools_used),
            grader_hint=data.get("grader"),
        )


@runtime_checkable
class Grader(Protocol):
    """Turns an answer into a GradeResult. `agrade` is the one to call from async code."""

    name: str

    def grade(self, answer: str, reference: Reference) -> GradeResult: ...

    async def agrade(self, answer: str, reference: Reference) -> GradeResult: ...


class SyncGrader:
    """Base for graders without I/O: `agrade` just calls `grade`."""

    name = "sync"

    def grade(self, answer: str, reference: Reference) -> GradeResult:
        raise NotImplementedError

    async def agrade(self, answer: str, reference: Reference) -> GradeResult:
        return self.grade(answer, reference)


async def grade_row(
    grader: Grader,
    row: Row | Mapping[str, Any],
    answer: str,
    tools_used: Iterable[str] | None = None,
) -> GradeResult:
    """Grade an episode's final answer against its dataset row (what an environment calls)."""
    return await grader.agrade(answer, Reference.from_row(row, tools_used))


def run_sync(coro: Coroutine[Any, Any, T], what: str) -> T:
    """Run an async grade from sync code; inside a running loop that would deadlock."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise GraderInputError(f"{what}.grade() cannot run inside an event loop; await agrade()")
