"""Graders from config: `make_grader({"type": "numeric", "tolerance_rel": 0.02})`.

Built-in types:
    {"type": "numeric", "tolerance_rel": 0.02}
    {"type": "string"}
    {"type": "auto", "tolerance_rel": 0.02}            numeric or string per row
    {"type": "judge", "base_url": "http://127.0.0.1:8000/v1", "model": "...",
     "api_key_env": "JUDGE_API_KEY", "timeout_s": 60, "max_retries": 2}
    {"type": "composite", "parts": [{"grader": {...}, "weight": 0.7}, ...],
     "tool_policy": {"penalty": 0.5}}
Any spec may carry "tool_policy"; a plain string is shorthand for {"type": string}.
`register_grader_type` adds a type (a plugin's, say).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from envs.graders.auto import AutoGrader
from envs.graders.base import Grader
from envs.graders.compose import CompositeGrader, Part, ToolUsePolicy
from envs.graders.errors import GraderConfigError
from envs.graders.judge import JudgeConfig, JudgeGrader
from envs.graders.numeric import DEFAULT_TOLERANCE_REL, NumericGrader
from envs.graders.string import StringGrader


@dataclass(frozen=True)
class BuildContext:
    """What factories may need beyond the spec: an HTTP client or transport for judges."""

    http_client: httpx.AsyncClient | None = None
    transport: httpx.AsyncBaseTransport | None = None


GraderFactory = Callable[[dict[str, Any], BuildContext], Grader]
M = TypeVar("M", bound=BaseModel)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericSpec(_Spec):
    type: Literal["numeric", "auto"]
    tolerance_rel: float = Field(default=DEFAULT_TOLERANCE_REL, ge=0.0, lt=1.0)


class StringSpec(_Spec):
    type: Literal["string"]


class JudgeSpec(JudgeConfig):
    type: Literal["judge"]


class PartSpec(_Spec):
    grader: dict[str, Any] | str
    weight: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)


class CompositeSpec(_Spec):
    type: Literal["composite"]
    parts: list[PartSpec] = Field(min_length=1)
    tool_policy: ToolUsePolicy | None = None


def _numeric(spec: dict[str, Any], ctx: BuildContext) -> Grader:
    return NumericGrader(_validate(NumericSpec, spec).tolerance_rel)


def _auto(spec: dict[str, Any], ctx: BuildContext) -> Grader:
    return AutoGrader(_validate(NumericSpec, spec).tolerance_rel)


def _string(spec: dict[str, Any], ctx: BuildContext) -> Grader:
    _validate(StringSpec, spec)
    return StringGrader()


def _judge(spec: dict[str, Any], ctx: BuildContext) -> Grader:
    config = JudgeConfig(**_validate(JudgeSpec, spec).model_dump(exclude={"type"}))
    return JudgeGrader(config, client=ctx.http_client, transport=ctx.transport)


def _composite(spec: dict[str, Any], ctx: BuildContext) -> Grader:
    parsed = _validate(CompositeSpec, spec)
    parts = [Part(_build(p.grader, ctx), p.weight) for p in parsed.parts]
    return CompositeGrader(parts, parsed.tool_policy)


_FACTORIES: dict[str, GraderFactory] = {
    "numeric": _numeric,
    "string": _string,
    "auto": _auto,
    "judge": _judge,
    "composite": _composite,
}


def register_grader_type(name: str, factory: GraderFactory) -> None:
    """Add a grader type; `factory(spec, ctx)` gets the whole spec, "type" included."""
    if name in _FACTORIES:
        raise GraderConfigError(f"grader type {name!r} is already registered")
    _FACTORIES[name] = factory


def known_grader_types() -> list[str]:
    return sorted(_FACTORIES)


def make_grader(
    spec: Mapping[str, Any] | BaseModel | str,
    *,
    http_client: httpx.AsyncClient | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Grader:
    """A grader from its spec; GraderConfigError names what is wrong and what is accepted."""
    if isinstance(spec, BaseModel):
        spec = spec.model_dump(exclude_none=True)
    return _build(spec, BuildContext(http_client, transport))


def _build(spec: Mapping[str, Any] | str, ctx: BuildContext) -> Grader:
    data: dict[str, Any] = {"type": spec} if isinstance(spec, str) else dict(spec)
    kind = data.get("type")
    factory = _FACTORIES.get(kind) if isinstance(kind, str) else None
    if factory is None:
        known = ", ".join(known_grader_types())
        raise GraderConfigError(f"unknown grader type {kind!r}; known types: {known}")
    policy = data.pop("tool_policy", None) if kind != "composite" else None
    grader = factory(data, ctx)
    if policy is None:
        return grader
    return CompositeGrader([Part(grader, 1.0)], _validate(ToolUsePolicy, policy))


def _validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        what = model.__name__.removesuffix("Spec").lower()
        raise GraderConfigError(f"bad {what} settings {data!r}: {problems}") from None
