"""Did tuning cost the policy what it could do before? Probe set and tool-call format checks.

GRPO on one environment can quietly trade away skills it was never rewarded for. Two cheap
signals, both computed from trajectories the eval plays anyway:

- A probe set: rows of another registered environment (by default the other built-in one:
  TatQA for a FilingsQA-trained policy), played by both sides with the same seeds. Its reward
  drop (base - tuned mean reward, with a paired-bootstrap interval) is what forgetting costs
  on work the adapter was not trained on.
- Format checks on every played episode of the main and probe sets: calls that do not parse,
  calls to tools that were not offered, arguments that do not fit the offered JSON schema, and
  episodes whose budget ran out before an answer. A tuned policy that formats worse than its
  base breaks in production on rows no grader sees.

KL(tuned || base) lives in rollout.kl; `Forgetting` gathers all three for the gate and report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, computed_field

from envs.actions import ToolCall, parse_action
from rollout.compare import Comparison
from rollout.stats import Interval, derived_seed, paired_bootstrap
from rollout.trajectory import Trajectory

# The built-in environments probe each other; any other environment needs --probe-env.
DEFAULT_PROBES = {
    "toolgym/FilingsQA-v0": "toolgym/TatQA-v0",
    "toolgym/TatQA-v0": "toolgym/FilingsQA-v0",
}
PROBE_ROWS = 50
# Failures of the infrastructure, not of the model's formatting: such episodes are left out.
INFRA_ERRORS = frozenset({"policy", "tool", "timeout"})

Schemas = dict[str, dict[str, Any]]  # tool name -> JSON schema of its arguments


@dataclass(frozen=True)
class ProbeRequest:
    """Rows of another environment that both policies play (see the module doc)."""

    env_id: str
    dataset: Path | None = None  # None: the environment's own rows
    rows: int | None = PROBE_ROWS  # drawn with the eval's seed; None: every row
    tools_url: str | None = None
    transport: str | None = None


def default_probe_env(env_id: str) -> str | None:
    return DEFAULT_PROBES.get(env_id)


class FormatStats(BaseModel):
    """Tool-call hygiene of one side on one set of episodes."""

    episodes: int = 0  # played to an end the model is responsible for
    calls: int = 0
    malformed_calls: int = 0  # markup or JSON that does not parse, or no tool name
    unknown_tools: int = 0  # a tool that was not offered
    invalid_arguments: int = 0  # arguments that do not fit the offered schema
    unanswered: int = 0  # the budget ran out before an answer
    flawed_episodes: int = 0  # episodes with at least one of the above
    schemas_checked: bool = True  # False: no schema was at hand, arguments were not checked

    @computed_field  # type: ignore[prop-decorator]
    @property
    def error_rate(self) -> float:
        """Share of episodes with at least one format error."""
        return self.flawed_episodes / self.episodes if self.episodes else 0.0


class FormatChecks(BaseModel):
    set: str  # "main" or "probe"
    base: FormatStats
    tuned: FormatStats

    @computed_field  # type: ignore[prop-decorator]
    @property
    def increase(self) -> float:
        return self.tuned.error_rate - self.base.error_rate


class ProbeResult(BaseModel):
    env_id: str
    rows: int  # compared on both sides
    base_reward: float
    tuned_reward: float
    ci: Interval | None  # of the mean reward delta (tuned - base)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def drop(self) -> float:
        return self.base_reward - self.tuned_reward


class KLResult(BaseModel):
    """KL(tuned || base) per generated token of the tuned trajectories (see rollout.kl)."""

    value: float | None = None
    tokens: int = 0
    sequences: int = 0
    method: str = ""
    unavailable: str | None = None  # why there is no value


class Forgetting(BaseModel):
    probe: ProbeResult | None = None
    probe_note: str | None = None  # why there is no probe
    formats: list[FormatChecks] = Field(default_factory=list)
    kl: KLResult = Field(default_factory=lambda: KLResult(unavailable="not measured"))


# --- format checks ---------------------------------------------------------------------------

_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "array": list,
    "object": dict,
    "null": type(None),
}


def _is(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return kind == "number" or float(value).is_integer()
    expected = _TYPES.get(kind)
    return True if expected is None else isinstance(value, expected)


def _fits(value: Any, spec: dict[str, Any]) -> bool:
    if "enum" in spec and value not in spec["enum"]:
        return False
    options = spec.get("anyOf") or spec.get("oneOf")
    if isinstance(options, list):
        return any(_fits(value, option) for option in options if isinstance(option, dict))
    kind = spec.get("type")
    if kind is None:
        return True
    return any(_is(value, k) for k in (kind if isinstance(kind, list) else [kind]))


def argument_problem(arguments: dict[str, Any], schema: dict[str, Any] | None) -> str | None:
    """Why `arguments` do not fit `schema`, or None. The subset of JSON Schema tools offer in
    practice (required, additionalProperties: false, property types, anyOf, enum): enough to
    tell a call the server would refuse, without a validator dependency."""
    if not schema:
        return None
    properties = schema.get("properties") or {}
    missing = [name for name in schema.get("required") or [] if name not in arguments]
    if missing:
        return f"missing required argument {missing[0]!r}"
    if schema.get("additionalProperties") is False:
        extra = [name for name in arguments if name not in properties]
        if extra:
            return f"unknown argument {extra[0]!r}"
    for name, value in arguments.items():
        spec = properties.get(name)
        if isinstance(spec, dict) and not _fits(value, spec):
            return f"argument {name!r} does not fit {spec.get('type') or spec}"
    return None


def schemas_of(specs: Iterable[dict[str, Any]]) -> Schemas:
    """Tool name -> argument schema, from OpenAI function-tool specs."""
    out: Schemas = {}
    for spec in specs:
        function = spec.get("function") if isinstance(spec, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            out[function["name"]] = parameters if isinstance(parameters, dict) else {}
    return out


def _call_problem(call: ToolCall, offered: set[str], schemas: Schemas | None) -> str | None:
    """ "malformed", "unknown_tool", "invalid_arguments" or None."""
    if call.error or call.arguments is None or not call.name:
        return "malformed"
    if offered and call.name not in offered:
        return "unknown_tool"
    if schemas is not None and argument_problem(call.arguments, schemas.get(call.name)):
        return "invalid_arguments"
    return None


def _episode_checks(trajectory: Trajectory, schemas: Schemas | None, stats: FormatStats) -> bool:
    """Count one episode's calls into `stats`; True when any of them (or its end) was flawed."""
    offered = set(trajectory.tools)
    flawed = False
    for index, message in enumerate(trajectory.messages):
        if message.get("role") != "assistant":
            continue
        parsed = parse_action(message, index)
        if parsed.error:
            stats.malformed_calls += 1
            flawed = True
        for call in parsed.tool_calls:
            stats.calls += 1
            problem = _call_problem(call, offered, schemas)
            if problem == "malformed":
                stats.malformed_calls += 1
            elif problem == "unknown_tool":
                stats.unknown_tools += 1
            elif problem == "invalid_arguments":
                stats.invalid_arguments += 1
            flawed = flawed or problem is not None
    if trajectory.answer is None and trajectory.error is None:
        stats.unanswered += 1
        flawed = True
    return flawed


def format_stats(
    trajectories: Iterable[Trajectory],
    schemas: Schemas | None,
    row_schemas: dict[str, Schemas] | None = None,
) -> FormatStats:
    """Format checks over the episodes the model is responsible for (infrastructure failures
    are left out). `row_schemas` overrides `schemas` for rows that offer their own tools."""
    stats = FormatStats(schemas_checked=schemas is not None)
    for trajectory in trajectories:
        if trajectory.error is not None and trajectory.error.kind in INFRA_ERRORS:
            continue
        stats.episodes += 1
        own = (row_schemas or {}).get(trajectory.row_id, schemas)
        if _episode_checks(trajectory, own, stats):
            stats.flawed_episodes += 1
    return stats


def format_checks(
    name: str,
    base: list[Trajectory],
    tuned: list[Trajectory],
    schemas: Schemas | None,
    row_schemas: dict[str, Schemas] | None = None,
) -> FormatChecks:
    return FormatChecks(
        set=name,
        base=format_stats(base, schemas, row_schemas),
        tuned=format_stats(tuned, schemas, row_schemas),
    )


# --- probe -----------------------------------------------------------------------------------


def probe_result(env_id: str, comparison: Comparison, *, seed: int) -> ProbeResult:
    """The probe's mean rewards on both sides and the interval of their paired difference."""
    both = [s for s in comparison.samples if s.reward_delta is not None]
    base = np.array([s.base.reward or 0.0 for s in both], dtype=float)
    tuned = np.array([s.tuned.reward or 0.0 for s in both], dtype=float)
    summary = comparison.summary
    return ProbeResult(
        env_id=env_id,
        rows=len(both),
        base_reward=summary.base_reward,
        tuned_reward=summary.tuned_reward,
        ci=paired_bootstrap(base, tuned, seed=derived_seed(seed, "probe", env_id)),
    )
