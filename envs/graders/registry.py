"""Graders from config: `make_grader({"type": "numeric", "tolerance_rel": 0.02})`.

Built-in types:
    {"type": "numeric", "tolerance_rel": 0.02, "require_unit": false}
    {"type": "string"}
    {"type": "auto", "tolerance_rel": 0.02, "require_unit": false}   numeric or string per row
    {"type": "judge", "base_url": "http://127.0.0.1:8000/v1", "model": "...",
     "api_key_env": "JUDGE_API_KEY", "timeout_s": 60, "max_retries": 2}
    {"type": "composite", "parts": [{"grader": {...}, "weight": 0.7}, ...],
     "tool_policy": {"penalty": 0.5}}
Any spec may carry "tool_policy"; a plain string is shorthand for {"type": string}.
`register_grader_type` adds a type (a plugin's, say). `check_grader_spec` validates a spec
without building it, so a config file's mistakes surface when it is loaded, not mid-run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, ValidationError

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
T = TypeVar("T")
# A number written as a number: YAML's `tolerance_rel: yes` or `"0.1"` is a mistake to report,
# not a value to coerce (pydantic would read `true` as 1.0).
Number = Annotated[float, Strict()]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericSpec(_Spec):
    type: Literal["numeric", "auto"]
    tolerance_rel: Number = Field(default=DEFAULT_TOLERANCE_REL, ge=0.0, lt=1.0)
    # The answer must state the scale or % the reference states ("842.5" against "$842.5
    # million" is then wrong); off, a bare figure is also read in the reference's unit.
    require_unit: StrictBool = False


class StringSpec(_Spec):
    type: Literal["string"]


class JudgeSpec(JudgeConfig):
    type: Literal["judge"]


class PartSpec(_Spec):
    grader: dict[str, Any] | str
    weight: Number = Field(default=1.0, ge=0.0, allow_inf_nan=False)


class CompositeSpec(_Spec):
    type: Literal["composite"]
    parts: list[PartSpec] = Field(min_length=1)
    tool_policy: ToolUsePolicy | None = None


def _numeric(spec: dict[str, Any], ctx: BuildContext) -> Grader:
    parsed = _validate(NumericSpec, spec)
    return NumericGrader(parsed.tolerance_rel, parsed.require_unit)


def _auto(spec: dict[str, Any], ctx: BuildContext) -> Grader:
    parsed = _validate(NumericSpec, spec)
    return AutoGrader(parsed.tolerance_rel, parsed.require_unit)


def _string(spec: dict[str, Any], ctx: BuildContext) -> Grader:
    _validate(StringSpec, spec)
    return StringGrader()


def _judge(spec: dict[str, Any], ctx: BuildContext) -> Grader:
    config = JudgeConfig(**_validate(JudgeSpec, spec).model_dump(exclude={"type"}))
    return JudgeGrader(config, client=ctx.http_client, transport=ctx.transport)


def _composite(spec: dict[str, Any], ctx: BuildContext) -> Grader:
    parsed = _validate(CompositeSpec, spec)
    parts = [Part(_in_part(i, _build, p.grader, ctx), p.weight) for i, p in enumerate(parsed.parts)]
    return CompositeGrader(parts, parsed.tool_policy)


def _in_part(index: int, step: Callable[..., T], *args: Any) -> T:
    """Run `step` on a composite's part, naming the part in any error it raises."""
    try:
        return step(*args)
    except GraderConfigError as exc:
        raise GraderConfigError(f"composite part {index}: {exc}") from None


_FACTORIES: dict[str, GraderFactory] = {
    "numeric": _numeric,
    "string": _string,
    "auto": _auto,
    "judge": _judge,
    "composite": _composite,
}
# What `check_grader_spec` validates a built-in type's settings against.
_SCHEMAS: dict[str, type[BaseModel]] = {
    "numeric": NumericSpec,
    "auto": NumericSpec,
    "string": StringSpec,
    "judge": JudgeSpec,
    "composite": CompositeSpec,
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


def check_grader_spec(spec: Any) -> None:
    """Raise GraderConfigError if `spec` cannot make a grader: unknown type, unknown option,
    a value of the wrong type or range. Builds nothing and reads no environment variable (a
    judge's API key is looked up when the grader is built). A type registered without a
    built-in schema is only checked to exist; its factory checks the rest when it builds."""
    data, kind = _parse(spec)
    policy = data.pop("tool_policy", None) if kind != "composite" else None
    if policy is not None:
        _validate(ToolUsePolicy, policy, "tool_policy")
    schema = _SCHEMAS.get(kind)
    if schema is None:
        return
    parsed = _validate(schema, data, f"{kind} grader")
    if isinstance(parsed, CompositeSpec):
        for i, part in enumerate(parsed.parts):
            _in_part(i, check_grader_spec, part.grader)


def _parse(spec: Any) -> tuple[dict[str, Any], str]:
    """The spec as a fresh dict, and its type, which must be a registered one."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise GraderConfigError(
            f"a grader is a type name or a mapping with a 'type' key, not {spec!r}; "
            f"known types: {', '.join(known_grader_types())}"
        )
    data = dict(spec)
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in _FACTORIES:
        known = ", ".join(known_grader_types())
        raise GraderConfigError(f"unknown grader type {kind!r}; known types: {known}")
    return data, kind


def _build(spec: Mapping[str, Any] | str, ctx: BuildContext) -> Grader:
    data, kind = _parse(spec)
    policy = data.pop("tool_policy", None) if kind != "composite" else None
    grader = _FACTORIES[kind](data, ctx)
    if policy is None:
        return grader
    return CompositeGrader([Part(grader, 1.0)], _validate(ToolUsePolicy, policy, "tool_policy"))


def _validate(model: type[M], data: Any, what: str | None = None) -> M:
    """`data` as `model`; GraderConfigError names each bad key and, for an unknown one, the
    options there are."""
    if what is None:
        kind = data.get("type") if isinstance(data, Mapping) else None
        what = f"{kind} grader" if isinstance(kind, str) else model.__name__.lower()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(model, e) for e in exc.errors(include_url=False))
        raise GraderConfigError(f"{what}: {problems}") from None


def _problem(model: type[BaseModel], error: Any) -> str:
    where = ".".join(str(x) for x in error["loc"])
    if error["type"] == "extra_forbidden" and len(error["loc"]) > 1:  # inside a part
        return f"unknown option {where!r}"
    if error["type"] == "extra_forbidden":
        options = ", ".join(name for name in model.model_fields if name != "type")
        return f"unknown option {where!r} (options: {options or 'none'})"
    if error["type"] == "missing":
        return f"{where}: required"
    if not where:  # the whole value: `tool_policy: 3`
        return f"{error['msg']}, not {error['input']!r}"
    return f"{where}: {error['msg']}, not {error['input']!r}"
