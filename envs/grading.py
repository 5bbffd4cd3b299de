"""The bridge from an episode to the graders: a row, the final answer, the tools used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from envs.episode import EpisodeGrader
from envs.errors import EnvConfigError
from envs.graders import (
    Grader,
    GraderConfigError,
    GradeResult,
    check_grader_spec,
    grade_row,
    make_grader,
)

if TYPE_CHECKING:
    from envs.data.rows import Row

# Right answers found without the required tools earn half: the policy should learn to look.
DEFAULT_TOOL_POLICY = {"penalty": 0.5}


class RowGrader:
    """Grades an episode's answer against its row with one configured grader."""

    def __init__(self, grader: Grader) -> None:
        self.grader = grader

    async def grade(self, row: Row, answer: str, tools_used: set[str]) -> GradeResult:
        return await grade_row(self.grader, row, answer, tools_used)


def episode_grader(spec: EpisodeGrader | Mapping[str, Any] | str | None = None) -> EpisodeGrader:
    """A grader for episodes from a spec (see envs.graders.make_grader), `auto` by default.

    A spec without `tool_policy` gets the default must_use_tools penalty; pass
    `"tool_policy": null` to switch it off.
    """
    if spec is not None and not isinstance(spec, Mapping | str):
        return spec
    data: dict[str, Any] = (
        {"type": spec} if isinstance(spec, str) else dict(spec or {"type": "auto"})
    )
    data.setdefault("tool_policy", DEFAULT_TOOL_POLICY)
    if data["tool_policy"] is None:
        del data["tool_policy"]
    try:
        return RowGrader(make_grader(data))
    except GraderConfigError as exc:
        raise EnvConfigError(f"grader: {exc}") from None


def check_grader(spec: Any) -> None:
    """Validate an environment's grader spec when its config is loaded, so a typo fails
    there with EnvConfigError, not when the first episode is made."""
    if spec is None:
        return
    try:
        check_grader_spec(spec)
    except GraderConfigError as exc:
        raise EnvConfigError(f"grader: {exc}") from None
