"""The release gate: `toolgym eval --gate gate.yaml` turns the eval into a yes or no for CI.

A gate file sets thresholds on the figures rollout.stats and rollout.forgetting compute; each
rule it names is checked, and the eval exits 0 when every one passes, 1 when any fails (each
failure printed with its figure and the slice or rows behind it), 2 on errors. A rule whose
figure could not be measured (no probe set, KL of served policies) fails: a gate must not
pass on what nobody looked at. The file is checked before anything is played: an unknown rule
or metadata key is refused with the valid ones, in one line.

    overall_delta_lower_bound_min: 0.0     # 95% lower bound of the pass@1 delta, all rows
    slice_delta_lower_bound_min: -0.10     # ... of every slice of >= min_slice_rows rows
    slice_keys: [difficulty, task_type]    # the keys slice rules judge (default: all sliced)
    regression_flips_max: 3                # rows whose majority outcome went pass -> fail
    probe_reward_drop_max: 0.05            # base - tuned mean reward on the probe set
    format_error_rate_increase_max: 0.0    # tuned - base share of episodes with format errors
    cohort_spread_increase_max: 0.05       # tuned - base std of slice rewards, per key
    kl_max: 0.5                            # KL(tuned || base) per generated token
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field

from envs.errors import yaml_problem
from rollout.errors import RolloutConfigError
from rollout.forgetting import Forgetting
from rollout.stats import SliceEstimate, Statistics

OPTIONS = ("slice_keys",)  # settings of rules, not rules


class GateConfigError(RolloutConfigError):
    """A gate file that cannot be used: said in one line, exit 2."""


class GateRules(BaseModel):
    """What a gate file may hold; every rule is optional, at least one is required."""

    model_config = ConfigDict(extra="forbid")

    overall_delta_lower_bound_min: float | None = Field(default=None, ge=-1.0, le=1.0)
    slice_delta_lower_bound_min: float | None = Field(default=None, ge=-1.0, le=1.0)
    slice_keys: list[str] | None = None
    regression_flips_max: int | None = Field(default=None, ge=0)
    probe_reward_drop_max: float | None = None
    format_error_rate_increase_max: float | None = None
    cohort_spread_increase_max: float | None = None
    kl_max: float | None = Field(default=None, ge=0.0)

    def rules(self) -> dict[str, float]:
        """The rules set, name -> threshold, in the order they are checked."""
        return {
            name: float(value)
            for name, value in self.model_dump().items()
            if name not in OPTIONS and value is not None
        }


@dataclass(frozen=True)
class Gate:
    source: str  # the file, as given
    rules: GateRules


def rule_names() -> list[str]:
    return [name for name in GateRules.model_fields if name not in OPTIONS]


def _problem(error: Any) -> str:
    where = ".".join(str(x) for x in error["loc"])
    if error["type"] == "extra_forbidden":
        return (
            f"unknown rule {where!r} (valid rules: {', '.join(rule_names())}; "
            f"options: {', '.join(OPTIONS)})"
        )
    return f"{where}: {error['msg']}, not {error['input']!r}"


def parse_gate(text: str, source: str) -> Gate:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GateConfigError(f"gate {source}: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise GateConfigError(
            f"gate {source}: expected a mapping of rules (valid: {', '.join(rule_names())})"
        )
    try:
        rules = GateRules.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors(include_url=False))
        raise GateConfigError(f"gate {source}: {problems}") from None
    if not rules.rules():
        raise GateConfigError(
            f"gate {source}: names no rule (valid rules: {', '.join(rule_names())})"
        )
    return Gate(source, rules)


def load_gate(path: Path) -> Gate:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GateConfigError(f"gate {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_gate(text, str(path))


def check_keys(gate: Gate, known: set[str]) -> None:
    """Refuse slice_keys that no row has, before anything is played."""
    unknown = [key for key in gate.rules.slice_keys or [] if key not in known]
    if unknown:
        raise GateConfigError(
            f"gate {gate.source}: slice_keys: unknown metadata key {unknown[0]!r} "
            f"(valid: {', '.join(sorted(known)) or 'none: the rows have no metadata'})"
        )


def needs_probe(gate: Gate | None) -> bool:
    return gate is not None and gate.rules.probe_reward_drop_max is not None


# --- checking --------------------------------------------------------------------------------


class RuleResult(BaseModel):
    rule: str
    threshold: float
    passed: bool
    figure: float | None  # None: not measured (which fails the rule)
    detail: str  # the figure in words, and the slices or rows behind a failure
    rows: list[str] = Field(default_factory=list)  # rows behind a failure, when rows are


class GateVerdict(BaseModel):
    source: str
    results: list[RuleResult]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failures(self) -> list[RuleResult]:
        return [r for r in self.results if not r.passed]


@dataclass(frozen=True)
class Figures:
    """What the rules are checked against."""

    stats: Statistics
    forgetting: Forgetting
    keys: list[str] | None  # slice_keys; None: every sliced key


def _result(
    name: str,
    threshold: float,
    passed: bool,
    figure: float | None,
    detail: str,
    rows: list[str] | None = None,
) -> RuleResult:
    return RuleResult(
        rule=name, threshold=threshold, passed=passed, figure=figure, detail=detail, rows=rows or []
    )


def _overall(name: str, threshold: float, f: Figures) -> RuleResult:
    o = f.stats.overall
    if o.ci is None:
        return _result(
            name, threshold, False, None, "not measured: no row has a reward on both sides"
        )
    detail = f"pass@1 delta {o.delta:+.3f} {o.ci.text()} over {o.n} rows"
    return _result(name, threshold, o.ci.low >= threshold, o.ci.low, detail)


def judged_slices(f: Figures) -> list[SliceEstimate]:
    """The slices a slice rule looks at: the chosen keys' slices that are big enough."""
    keys = f.keys if f.keys is not None else sorted(f.stats.slices)
    return [
        e
        for key in keys
        for e in f.stats.slices.get(key, [])
        if e.n >= f.stats.min_slice_rows and e.ci is not None
    ]


def _slice_text(e: SliceEstimate) -> str:
    return f"{e.key}={e.value} delta {e.delta:+.3f} {e.ci.text() if e.ci else ''}, n {e.n}"


def _slices(name: str, threshold: float, f: Figures) -> RuleResult:
    judged = judged_slices(f)
    if not judged:
        return _result(
            name, threshold, True, None, f"no slice of >= {f.stats.min_slice_rows} rows to judge"
        )
    worst = min(judged, key=lambda e: (e.lower or 0.0, e.key, e.value))
    below = sorted(
        (e for e in judged if (e.lower or 0.0) < threshold), key=lambda e: e.lower or 0.0
    )
    detail = (
        "; ".join(_slice_text(e) for e in below)
        if below
        else f"lowest: {_slice_text(worst)} ({len(judged)} slices judged)"
    )
    return _result(name, threshold, not below, worst.lower, detail)


def _flips(name: str, threshold: float, f: Figures) -> RuleResult:
    flips = f.stats.regression_flips()
    shown = ", ".join(r.id for r in flips[:10]) + (" …" if len(flips) > 10 else "")
    detail = f"{len(flips)} rows went pass -> fail" + (f": {shown}" if flips else "")
    return _result(
        name, threshold, len(flips) <= threshold, float(len(flips)), detail, [r.id for r in flips]
    )


def _probe(name: str, threshold: float, f: Figures) -> RuleResult:
    probe = f.forgetting.probe
    if probe is None:
        why = f.forgetting.probe_note or "no probe set"
        return _result(name, threshold, False, None, f"not measured: {why}")
    ci = f" (delta {probe.ci.text()})" if probe.ci else ""
    detail = (
        f"{probe.env_id}: reward {probe.base_reward:.3f} -> {probe.tuned_reward:.3f} over "
        f"{probe.rows} rows{ci}"
    )
    return _result(name, threshold, probe.drop <= threshold, probe.drop, detail)


def _formats(name: str, threshold: float, f: Figures) -> RuleResult:
    checks = [c for c in f.forgetting.formats if c.base.episodes and c.tuned.episodes]
    if not checks:
        return _result(
            name, threshold, False, None, "not measured: no episode was played to an end"
        )
    worst = max(c.increase for c in checks)
    parts = [
        f"{c.set}: {c.base.error_rate:.3f} -> {c.tuned.error_rate:.3f} ({c.increase:+.3f})"
        for c in checks
        if worst <= threshold or c.increase > threshold
    ]
    return _result(
        name, threshold, worst <= threshold, worst, "format-error rate " + "; ".join(parts)
    )


def _spreads(name: str, threshold: float, f: Figures) -> RuleResult:
    keys = set(f.keys) if f.keys is not None else None
    spreads = [
        s for s in f.stats.spreads if s.increase is not None and (keys is None or s.key in keys)
    ]
    if not spreads:
        return _result(name, threshold, True, None, "no key has two slices big enough for a spread")
    grown = [s for s in spreads if (s.increase or 0.0) > threshold]
    worst = max(spreads, key=lambda s: s.increase or 0.0)
    shown = grown or [worst]
    detail = "; ".join(
        f"{s.key}: std of slice rewards {s.base:.3f} -> {s.tuned:.3f}" for s in shown
    )
    return _result(name, threshold, not grown, worst.increase, detail)


def _kl(name: str, threshold: float, f: Figures) -> RuleResult:
    kl = f.forgetting.kl
    if kl.value is None:
        return _result(name, threshold, False, None, f"not measured: {kl.unavailable}")
    detail = f"KL(tuned || base) {kl.value:.4f} per token over {kl.tokens} generated tokens"
    return _result(name, threshold, kl.value <= threshold, kl.value, detail)


CHECKS: dict[str, Callable[[str, float, Figures], RuleResult]] = {
    "overall_delta_lower_bound_min": _overall,
    "slice_delta_lower_bound_min": _slices,
    "regression_flips_max": _flips,
    "probe_reward_drop_max": _probe,
    "format_error_rate_increase_max": _formats,
    "cohort_spread_increase_max": _spreads,
    "kl_max": _kl,
}


def evaluate_gate(gate: Gate, stats: Statistics, forgetting: Forgetting) -> GateVerdict:
    """Every rule the gate sets, checked; the verdict passes when all of them do."""
    figures = Figures(stats, forgetting, gate.rules.slice_keys)
    results = [
        CHECKS[name](name, threshold, figures) for name, threshold in gate.rules.rules().items()
    ]
    return GateVerdict(source=gate.source, results=results)
