"""The report's release sections: the gate's verdict, whether the difference is real, forgetting.

Rendered from a `ReleaseCheck` (rollout.release) into the same self-contained HTML as the rest
of the report (rollout.report places them and lists the flipped rows with their traces). The
gate comes first: it is what decides; the figures behind it follow.
"""

from __future__ import annotations

import html
from typing import Any

from rollout.forgetting import Forgetting, FormatChecks
from rollout.gate import GateVerdict
from rollout.release import ReleaseCheck, figure_text
from rollout.stats import DeltaEstimate, SliceEstimate, Statistics

CSS = """
.gate{border-radius:6px;padding:8px 12px;margin:8px 0;font-size:16px}
.gate.pass{background:#e3f4e8;border:1px solid #2e9d4f}
.gate.fail{background:#fde2e0;border:1px solid #d0342c}
tr.fail td{color:#d0342c}tr.below{background:#fde2e0}span.grew{color:#d0342c;font-weight:bold}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _signed(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:+.{digits}f}"


def gate_html(verdict: GateVerdict) -> str:
    failed = verdict.failures()
    state = "pass" if not failed else "fail"
    said = (
        f"FAIL: {len(failed)} of {len(verdict.results)} rules failed (exit code 1)"
        if failed
        else "PASS: every rule holds (exit code 0)"
    )
    rows = "".join(
        f'<tr class="{"pass" if r.passed else "fail"}"><td>{_e(r.rule)}</td>'
        f"<td>{threshold}</td><td>{figure}</td>"
        f"<td>{'pass' if r.passed else 'FAIL'}</td><td>{_e(r.detail)}</td></tr>"
        for r in failed + [r for r in verdict.results if r.passed]
        for figure, threshold in [figure_text(r)]
    )
    return (
        f"<h2>Release gate <span class=muted>{_e(verdict.source)}</span></h2>"
        f'<div class="gate {state}">{_e(said)}</div>'
        "<table><tr><th>rule</th><th>threshold</th><th>figure</th><th>verdict</th>"
        f"<th>behind it</th></tr>{rows}</table>"
    )


def _estimate_cells(e: DeltaEstimate) -> str:
    low, high = (e.ci.low, e.ci.high) if e.ci is not None else (None, None)
    return (
        f"<td>{e.n}</td><td>{e.base:.3f}</td><td>{e.tuned:.3f}</td><td>{_signed(e.delta)}</td>"
        f"<td>{_signed(low)}</td><td>{_signed(high)}</td>"
    )


def _slice_table(key: str, estimates: list[SliceEstimate], min_rows: int) -> str:
    rows = "".join(
        f'<tr class="{"below" if e.ci is not None and e.ci.high < 0 else ""}">'
        f"<td>{_e(e.value)}</td>{_estimate_cells(e)}"
        f"<td>{'' if e.n >= min_rows else 'too small to judge'}</td></tr>"
        for e in estimates
    )
    return (
        f"<h3>{_e(key)}</h3><table><tr><th>value</th><th>n</th><th>base</th><th>tuned</th>"
        f"<th>delta</th><th>low</th><th>high</th><th></th></tr>{rows}</table>"
    )


def statistics_html(stats: Statistics) -> str:
    o = stats.overall
    intro = (
        f'<p class="muted">pass@1 per row = the share of its scored attempts that solved it; '
        f"the delta is tuned − base, its {stats.level:.0%} interval a paired bootstrap over "
        f"rows ({stats.resamples} resamples, seed {stats.seed}). Slices whose interval lies "
        f"wholly below 0 are shaded; slices under {stats.min_slice_rows} rows are not judged.</p>"
    )
    overall = (
        "<table><tr><th>rows</th><th>n</th><th>base</th><th>tuned</th><th>delta</th>"
        f"<th>low</th><th>high</th></tr><tr><td>all</td>{_estimate_cells(o)}</tr></table>"
    )
    slices = "".join(
        _slice_table(key, stats.slices[key], stats.min_slice_rows) for key in sorted(stats.slices)
    )
    return f"<h2>Is the difference real?</h2>{intro}{overall}{slices}{_spread_html(stats)}"


def _spread_html(stats: Statistics) -> str:
    rows = "".join(
        f"<tr><td>{_e(s.key)}</td><td>{s.slices}</td><td>{_signed(s.base)}</td>"
        f"<td>{_signed(s.tuned)}</td><td>{_signed(s.increase)}"
        f"{' <span class=grew>grew</span>' if s.grew else ''}</td></tr>"
        for s in stats.spreads
    )
    if not rows:
        return ""
    return (
        "<h3>Cohort spread</h3><p class=muted>Per key, the standard deviation of the slices' "
        f"mean rewards (slices of ≥ {stats.min_slice_rows} rows): a spread that grew leaves "
        "some cohorts behind even when the mean rose.</p><table><tr><th>key</th><th>slices</th>"
        f"<th>base</th><th>tuned</th><th>change</th></tr>{rows}</table>"
    )


def _formats_rows(checks: FormatChecks) -> str:
    out = []
    for side, s in (("base", checks.base), ("tuned", checks.tuned)):
        invalid = str(s.invalid_arguments) if s.schemas_checked else "unchecked"
        out.append(
            f"<tr><td>{_e(checks.set)}</td><td>{side}</td><td>{s.episodes}</td><td>{s.calls}</td>"
            f"<td>{s.malformed_calls}</td><td>{s.unknown_tools}</td><td>{invalid}</td>"
            f"<td>{s.unanswered}</td><td>{s.error_rate:.3f}</td></tr>"
        )
    return "".join(out)


def forgetting_html(forgetting: Forgetting) -> str:
    probe = forgetting.probe
    if probe is None:
        said = f"no probe set: {_e(forgetting.probe_note or 'not asked for')}"
    else:
        ci = f", delta interval {probe.ci.text()}" if probe.ci else ""
        said = (
            f"probe <b>{_e(probe.env_id)}</b>, {probe.rows} rows: reward "
            f"{probe.base_reward:.3f} → {probe.tuned_reward:.3f} (drop {probe.drop:+.3f}{ci})"
        )
    kl = forgetting.kl
    kl_text = (
        f"unavailable: {_e(kl.unavailable)}"
        if kl.value is None
        else f"{kl.value:.4f} per generated token over {kl.tokens} tokens of {kl.sequences} "
        f"sequences ({_e(kl.method)})"
    )
    formats = "".join(_formats_rows(c) for c in forgetting.formats)
    table = (
        "<table><tr><th>set</th><th>side</th><th>episodes</th><th>calls</th><th>malformed</th>"
        "<th>unknown tool</th><th>invalid arguments</th><th>unanswered</th>"
        f"<th>format-error rate</th></tr>{formats}</table>"
        if formats
        else ""
    )
    return (
        f"<h2>Forgetting</h2><p>{said}</p><p>KL(tuned ‖ base): {kl_text}</p>"
        "<h3>Tool-call format</h3><p class=muted>Per episode the model finished (infrastructure "
        "failures left out): calls that do not parse, tools not offered, arguments that do "
        "not fit the offered schema, budgets that ran out before an answer.</p>"
        f"{table}"
    )


def release_sections(release: ReleaseCheck | None) -> tuple[str, str]:
    """(what goes above the summary: the gate; what goes below it: statistics, forgetting)."""
    if release is None:
        return "", ""
    gate = gate_html(release.gate) if release.gate is not None else ""
    return gate, statistics_html(release.statistics) + forgetting_html(release.forgetting)
