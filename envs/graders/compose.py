"""Composition: a weighted mix of graders, and a penalty for skipping required tools.

Weights are normalised to sum to 1, so the mix stays in [0, 1]. If any part fails (its
`error` is set), the whole grade fails: a weighted sum over a missing part would pass a
judge outage off as a low reward.

Tool use: when a row lists `must_use_tools` and the episode did not use them all, the score is
multiplied by (1 - penalty). Multiplying, not subtracting, keeps a wrong answer at 0 (not
below) and keeps the order within a group: a right answer found without the tools still beats
a wrong one, it just earns less than a right answer found with them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from envs.graders.base import (
    Grader,
    GradeResult,
    Reference,
    SyncGrader,
    failure,
    run_sync,
    verdict_for,
)
from envs.graders.errors import GraderConfigError, GraderInputError


class ToolUsePolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The fraction of the score taken away; strict, so YAML's `penalty: yes` is no 1.0.
    penalty: float = Field(default=0.5, ge=0.0, le=1.0, strict=True)

    def apply(self, result: GradeResult, reference: Reference) -> GradeResult:
        """`result` with the penalty applied when a required tool went unused."""
        required = reference.must_use_tools
        if not required or result.failed:
            return result
        if reference.tools_used is None:
            raise GraderInputError(
                "this row requires tools "
                f"({', '.join(sorted(required))}) but the caller did not say which were used"
            )
        missing = sorted(required - reference.tools_used)
        factor = 1.0 - self.penalty if missing else 1.0
        tool_use = {
            "required": sorted(required),
            "used": sorted(reference.tools_used),
            "missing": missing,
            "factor": factor,
        }
        details = {**result.details, "tool_use": tool_use}
        return result.model_copy(update={"score": result.score * factor, "details": details})


@dataclass(frozen=True)
class Part:
    grader: Grader
    weight: float


class CompositeGrader:
    """A weighted mix of graders (one part is fine), with an optional tool-use policy."""

    name = "composite"

    def __init__(self, parts: Sequence[Part], tool_policy: ToolUsePolicy | None = None) -> None:
        if not parts:
            raise GraderConfigError("a composite grader needs at least one part")
        weights = [p.weight for p in parts]
        if not all(math.isfinite(w) and w >= 0.0 for w in weights) or sum(weights) <= 0:
            raise GraderConfigError(
                f"composite weights must be >= 0 with a positive sum: {weights}"
            )
        total = sum(p.weight for p in parts)
        self.parts = [Part(p.grader, p.weight / total) for p in parts]
        self.tool_policy = tool_policy

    def grade(self, answer: str, reference: Reference) -> GradeResult:
        if not all(isinstance(p.grader, SyncGrader) for p in self.parts):
            # Parts doing I/O (a judge) run concurrently in one event loop.
            return run_sync(self.agrade(answer, reference), "CompositeGrader")
        return self._combine([p.grader.grade(answer, reference) for p in self.parts], reference)

    async def agrade(self, answer: str, reference: Reference) -> GradeResult:
        results = await asyncio.gather(*(p.grader.agrade(answer, reference) for p in self.parts))
        return self._combine(list(results), reference)

    def _combine(self, results: list[GradeResult], reference: Reference) -> GradeResult:
        pairs = list(zip(self.parts, results, strict=True))
        if len(pairs) == 1:
            combined = results[0]  # one part: its own verdict (rounding_slip, ...) and details
        else:
            details = {"parts": [_part_details(p, r) for p, r in pairs]}
            broken = [(p, r) for p, r in pairs if r.failed]
            if broken:
                part, result = broken[0]
                message = f"{part.grader.name} grader: {result.error}"
                return failure(result.verdict, message, **details)
            # fsum and rounding: weights 0.7 and 0.3 of two full scores must give exactly 1.0.
            total = round(math.fsum(p.weight * r.score for p, r in pairs), 12)
            score = min(1.0, total)
            combined = GradeResult(score=score, verdict=verdict_for(score), details=details)
        return self.tool_policy.apply(combined, reference) if self.tool_policy else combined


def _part_details(part: Part, result: GradeResult) -> dict[str, Any]:
    return {
        "grader": part.grader.name,
        "weight": part.weight,
        "score": result.score,
        "verdict": result.verdict.value,
        "details": result.details,
        "error": result.error,
    }
