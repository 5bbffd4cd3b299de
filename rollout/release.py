"""Everything an eval says about shipping the tuned adapter, in one typed record.

`ReleaseCheck` gathers the statistics (rollout.stats), the forgetting signals
(rollout.forgetting, rollout.kl) and, with a gate file, the gate's verdict (rollout.gate).
The eval writes it as release.json (what CI reads), prints it under the comparison, and the
report renders it (rollout.report_release). Its exit code is what `toolgym eval` returns.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from rollout.forgetting import Forgetting, FormatChecks
from rollout.gate import Gate, GateVerdict, RuleResult, evaluate_gate
from rollout.stats import DeltaEstimate, SliceEstimate, Statistics

SLICES_PER_KEY = 5  # the terminal shows each key's lowest lower bounds; the report shows all


class ReleaseCheck(BaseModel):
    statistics: Statistics
    forgetting: Forgetting
    gate: GateVerdict | None = None

    @property
    def exit_code(self) -> int:
        """0 without a gate or when it passes; 1 when any of its rules fails."""
        return 1 if self.gate is not None and not self.gate.passed else 0


def release_check(stats: Statistics, forgetting: Forgetting, gate: Gate | None) -> ReleaseCheck:
    verdict = None if gate is None else evaluate_gate(gate, stats, forgetting)
    return ReleaseCheck(statistics=stats, forgetting=forgetting, gate=verdict)


def write_release(release: ReleaseCheck, path: Path) -> None:
    data = release.model_dump(mode="json")
    data["exit_code"] = release.exit_code
    path.write_text(json.dumps(data, indent=2) + "\n")


# --- terminal --------------------------------------------------------------------------------


def _estimate(e: DeltaEstimate) -> str:
    ci = e.ci.text() if e.ci is not None else "[no rows]"
    return f"{e.delta:+.3f} {ci}"


def _slice_line(key: str, estimates: list[SliceEstimate], min_rows: int) -> str | None:
    judged = sorted(
        (e for e in estimates if e.n >= min_rows and e.ci is not None),
        key=lambda e: (e.lower or 0.0, e.value),
    )
    if not judged:
        return None
    shown = "; ".join(f"{e.value} {_estimate(e)} n={e.n}" for e in judged[:SLICES_PER_KEY])
    more = f"; … {len(judged) - SLICES_PER_KEY} more" if len(judged) > SLICES_PER_KEY else ""
    return f"  by {key}, lowest bounds first: {shown}{more}"


def statistics_lines(stats: Statistics) -> list[str]:
    o = stats.overall
    lines = [
        f"pass@1 delta {_estimate(o)} ({stats.level:.0%} interval: paired bootstrap over {o.n} "
        f"rows, {stats.resamples} resamples, seed {stats.seed})"
    ]
    for key in sorted(stats.slices):
        line = _slice_line(key, stats.slices[key], stats.min_slice_rows)
        if line is not None:
            lines.append(line)
    worse, better = stats.regression_flips(), stats.improvement_flips()
    ids = ", ".join(f.id for f in worse[:5]) + (" …" if len(worse) > 5 else "")
    lines.append(
        f"flips (majority outcome): {len(worse)} pass -> fail"
        + (f" (worst first: {ids})" if worse else "")
        + f", {len(better)} fail -> pass"
    )
    spreads = [s for s in stats.spreads if s.base is not None and s.tuned is not None]
    if spreads:
        said = "; ".join(
            f"{s.key} {s.base:.3f} -> {s.tuned:.3f}{' GREW' if s.grew else ''}" for s in spreads
        )
        lines.append(f"cohort spread (std of slice rewards, base -> tuned): {said}")
    return lines


def _formats_line(checks: FormatChecks) -> str:
    b, t = checks.base, checks.tuned
    unchecked = "" if b.schemas_checked else ", arguments unchecked: no schema"
    return (
        f"  format errors, {checks.set}: {b.error_rate:.3f} -> {t.error_rate:.3f} of episodes "
        f"(malformed calls {b.malformed_calls} -> {t.malformed_calls}, unknown tools "
        f"{b.unknown_tools} -> {t.unknown_tools}, invalid arguments {b.invalid_arguments} -> "
        f"{t.invalid_arguments}, unanswered {b.unanswered} -> {t.unanswered}{unchecked})"
    )


def forgetting_lines(forgetting: Forgetting) -> list[str]:
    lines = ["forgetting:"]
    probe = forgetting.probe
    if probe is None:
        lines.append(f"  probe: none ({forgetting.probe_note or 'not asked for'})")
    else:
        ci = f", delta {probe.ci.text()}" if probe.ci else ""
        lines.append(
            f"  probe {probe.env_id} ({probe.rows} rows): reward {probe.base_reward:.3f} -> "
            f"{probe.tuned_reward:.3f} (drop {probe.drop:+.3f}{ci})"
        )
    lines += [_formats_line(c) for c in forgetting.formats]
    kl = forgetting.kl
    if kl.value is None:
        lines.append(f"  KL(tuned || base): unavailable ({kl.unavailable})")
    else:
        lines.append(
            f"  KL(tuned || base): {kl.value:.4f} per generated token over {kl.tokens} tokens "
            f"of {kl.sequences} sequences"
        )
    return lines


def figure_text(rule: RuleResult) -> tuple[str, str]:
    """(figure, threshold) as a person reads them: counts whole, deltas signed."""
    if rule.rule == "regression_flips_max":
        figure = "not measured" if rule.figure is None else f"{rule.figure:.0f}"
        return figure, f"{rule.threshold:.0f}"
    figure = "not measured" if rule.figure is None else f"{rule.figure:+.3f}"
    return figure, f"{rule.threshold:+.3f}"


def gate_lines(verdict: GateVerdict) -> list[str]:
    """The verdict, then each failed rule with its figure and what is behind it, then the rest."""
    failed = verdict.failures()
    head = "PASS" if not failed else f"FAIL ({len(failed)} of {len(verdict.results)} rules failed)"
    lines = [f"gate {verdict.source}: {head}"]
    for r in failed + [r for r in verdict.results if r.passed]:
        figure, threshold = figure_text(r)
        mark = "pass" if r.passed else "FAIL"
        lines.append(f"  {mark} {r.rule}: {figure} (threshold {threshold}): {r.detail}")
    return lines


def release_lines(release: ReleaseCheck) -> list[str]:
    """What the terminal shows under the comparison: figures, then the gate's verdict last,
    where CI logs are read."""
    lines = statistics_lines(release.statistics) + forgetting_lines(release.forgetting)
    if release.gate is not None:
        lines += gate_lines(release.gate)
    return lines
