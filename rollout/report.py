"""Base vs tuned for a person to read: one self-contained HTML file and its plots (the terminal
digest is rollout.report_text, each attempt's trace rollout.report_traces).

A mean reward delta says little on its own; the report puts next to it the slices (a good
average can hide one that broke), the regressions worst first with both policies' traces, and
the whole per-sample table. The HTML is a single file with inline CSS and base64 PNGs, so it can
be attached to a ticket or copied off a GPU box and opened anywhere. Every string that came from
a model, a tool or a dataset is escaped: model output can contain markup.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout.compare import (
    Comparison,
    SampleComparison,
    SliceStats,
    by_row,
    shown_slices,
    worst_slice,
)
from rollout.release import ReleaseCheck
from rollout.report_plots import plot_files
from rollout.report_release import CSS as RELEASE_CSS
from rollout.report_release import release_sections
from rollout.report_text import num, spread_text
from rollout.report_traces import prompt_text, trace_html
from rollout.stats import flip_rows
from rollout.trajectory import Trajectory


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    plots: dict[str, Path]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _meta(value: Any) -> str:
    """A metadata value as a person reads it: a list as its items, not as Python's repr."""
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


@dataclass
class _Rows:
    base: dict[str, list[Trajectory]]
    tuned: dict[str, list[Trajectory]]
    references: dict[str, str]


def _sample_html(sample: SampleComparison, rows: _Rows, collapsed: bool) -> str:
    base, tuned = rows.base.get(sample.id, []), rows.tuned.get(sample.id, [])
    meta = "; ".join(f"{k}={_meta(v)}" for k, v in sorted(sample.metadata.items()))
    head = (
        f"<b>{_e(sample.id)}</b> · {num(sample.base.reward)} → {num(sample.tuned.reward)} "
        f"(<span class='{sample.outcome}'>{num(sample.reward_delta, True)}</span>) · "
        f'tool calls {sample.tool_calls_delta:+.2f} · <span class="muted">{_e(meta)}</span>'
    )
    reference = rows.references.get(sample.id)
    body = (
        f'<div class="prompt"><b>prompt</b><pre>{_e(prompt_text(base or tuned))}</pre></div>'
        f'<div class="ref"><b>reference</b> '
        f"{_e(reference) if reference is not None else '<span class=muted>not given</span>'}</div>"
        f'<div class="pair">{trace_html("base", base)}{trace_html("tuned", tuned)}</div>'
    )
    attrs = f'class="sample {sample.outcome}" data-row="{_e(sample.id)}"'
    if collapsed:
        return f"<details {attrs}><summary>{head}</summary>{body}</details>"
    return f"<section {attrs}><h3>{head}</h3>{body}</section>"


def _summary_html(comparison: Comparison) -> str:
    s = comparison.summary
    cells = [
        ("base reward", num(s.base_reward)),
        ("tuned reward", num(s.tuned_reward)),
        ("reward delta", num(s.reward_delta, True)),
        ("tool calls delta", f"{s.tool_calls_delta:+.2f}"),
        ("improved", str(s.improved)),
        ("regressed", str(s.regressed)),
        ("unchanged, solved", str(s.unchanged_solved)),
        ("unchanged, never solved", str(s.unchanged_unsolved)),
        ("failed", str(s.failed)),
    ]
    cards = "".join(f'<div class="card"><div>{k}</div><b>{v}</b></div>' for k, v in cells)
    return (
        f'<h2>Summary</h2><p class="muted">{s.rows} rows, {s.compared} with a reward on both '
        f"sides; tolerance {comparison.tolerance:g}, solved at ≥ {comparison.solved_threshold:g}"
        f'</p><div class="cards">{cards}</div>{_pass_html(comparison)}'
    )


def _pass_html(comparison: Comparison) -> str:
    s = comparison.summary
    k = max(s.base_pass.k, s.tuned_pass.k)
    sides = (("base", s.base_pass), ("tuned", s.tuned_pass))
    if k <= 1:  # one attempt: pass@k is pass@1 and the headroom 0 by construction
        head = "<th>policy</th><th>pass@1</th>"
        rows = "".join(f"<tr><td>{n}</td><td>{num(r.pass_at_1)}</td></tr>" for n, r in sides)
    else:
        head = f"<th>policy</th><th>pass@1</th><th>pass@{k}</th><th>headroom</th>"
        rows = "".join(
            f"<tr><td>{n}</td><td>{num(r.pass_at_1)}</td><td>{num(r.pass_at_k)}</td>"
            f"<td>{num(r.headroom)}</td></tr>"
            for n, r in sides
        )
    return (
        f"<h3>pass@1, pass@k, headroom</h3><table><tr>{head}</tr>{rows}</table>"
        f'<p class="muted">{_e(_pass_note(comparison))}</p>'
    )


def _pass_note(comparison: Comparison) -> str:
    """What the pass figures mean (and, with one attempt a row, why there is no headroom)."""
    k = max(comparison.summary.base_pass.k, comparison.summary.tuned_pass.k)
    note = (
        f"Over the compared rows, success = reward ≥ {comparison.solved_threshold:g}. "
        "pass@1: the expected success of one attempt. "
    )
    if k <= 1:
        return note + (
            "With one attempt per row there is no pass@k to set against it, so no headroom "
            "(about the most RL can still win): use --attempts N."
        )
    return note + (
        f"pass@{k}: the share of rows solved in at least one of {k} attempts. "
        f"headroom = pass@{k} − pass@1, about the most RL can still win on these rows."
    )


def _slice_rows_html(stats: list[SliceStats], worst: SliceStats | None) -> str:
    return "".join(
        f"<tr{' class=worst' if s is worst else ''}><td>{_e(s.value)}</td><td>{s.n}</td>"
        f"<td>{num(s.base_reward)}</td><td>{num(s.tuned_reward)}</td>"
        f"<td>{num(s.reward_delta, True)}</td><td>{s.improved}</td><td>{s.regressed}</td></tr>"
        for s in stats
    )


def _slice_key_html(comparison: Comparison, key: str) -> str:
    stats = comparison.slices[key]
    shown = shown_slices(stats, comparison.min_slice_rows)
    notes = []
    if key in comparison.list_slice_keys:
        notes.append("list values: a row counts in the slice of each of its items")
    if len(shown) < len(stats):
        notes.append(f"{len(shown)} of {len(stats)} values shown: the most rows, and the worst")
    note = f'<p class="muted">{_e("; ".join(notes))}</p>' if notes else ""
    return (
        f"<h3>{_e(key)} <span class=muted>{_e(spread_text(comparison, key))}</span></h3>{note}"
        "<table><tr><th>value</th><th>n</th><th>base</th><th>tuned</th><th>delta</th>"
        "<th>improved</th><th>regressed</th></tr>"
        f"{_slice_rows_html(shown, worst_slice(stats, comparison.min_slice_rows))}</table>"
    )


def _skipped_html(comparison: Comparison) -> str:
    if not comparison.skipped_slice_keys:
        return ""
    items = "".join(
        f"<li><code>{_e(key)}</code>: {_e(why)}</li>"
        for key, why in sorted(comparison.skipped_slice_keys.items())
    )
    return f'<p class="muted">metadata keys not sliced by:</p><ul class="skipped">{items}</ul>'


def _slices_html(comparison: Comparison) -> str:
    rule = (
        f'<p class="muted">The spread (largest minus smallest slice delta) and the worst slice '
        f"count only slices of ≥ {comparison.min_slice_rows} rows, so a tiny slice cannot "
        "dominate; smaller ones are still listed.</p>"
    )
    skipped = _skipped_html(comparison)
    if not comparison.slices:
        return f'<h2>Slices</h2><p class="muted">no metadata key to slice by</p>{skipped}'
    keys = "".join(_slice_key_html(comparison, key) for key in sorted(comparison.slices))
    return f"<h2>Slices</h2>{rule}{keys}{skipped}"


def _plots_html(plots: dict[str, Path]) -> str:
    images = "".join(
        f'<img alt="{_e(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode("ascii")}">'
        for name, path in plots.items()
    )
    return f'<h2>Plots</h2><div class="plots">{images}</div>'


def _table_html(comparison: Comparison) -> str:
    keys = sorted(comparison.slices) or sorted({k for s in comparison.samples for k in s.metadata})
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    rows = "".join(
        f'<tr class="{s.outcome}"><td>{_e(s.id)}</td>'
        + "".join(f"<td>{_e(_meta(s.metadata.get(k, '')))}</td>" for k in keys)
        + f"<td>{num(s.base.reward)}</td><td>{num(s.tuned.reward)}</td>"
        f"<td>{num(s.reward_delta, True)}</td><td>{s.tool_calls_delta:+.2f}</td>"
        f"<td>{s.outcome}</td></tr>"
        for s in comparison.samples
    )
    return (
        f"<h2>All samples ({len(comparison.samples)})</h2><table><tr><th>id</th>{head}"
        "<th>base</th><th>tuned</th><th>delta</th><th>tool calls Δ</th><th>outcome</th></tr>"
        f"{rows}</table>"
    )


def _list_html(
    title: str, samples: Iterable[SampleComparison], rows: _Rows, collapsed: bool
) -> str:
    items = [_sample_html(s, rows, collapsed) for s in samples]
    body = "".join(items) or '<p class="muted">none</p>'
    return f"<h2>{title} ({len(items)})</h2>{body}"


def _flips_html(comparison: Comparison, rows: _Rows) -> str:
    """Rows whose majority outcome flipped: pass -> fail first, each with both traces."""
    by_id = {s.id: s for s in comparison.samples}
    flips = flip_rows(comparison.samples)
    worse = [by_id[f.id] for f in flips if f.kind == "pass_to_fail"]
    better = [by_id[f.id] for f in flips if f.kind == "fail_to_pass"]
    return _list_html("Flips pass → fail, worst first", worse, rows, False) + _list_html(
        "Flips fail → pass", better, rows, True
    )


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1240px;padding:0 16px}
h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
.muted{color:#888;font-weight:normal}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:110px}
.card div{font-size:12px;color:#666}.card b{font-size:20px}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
tr.worst{background:#fde2e0;font-weight:bold}
span.improved,tr.improved{color:#2e9d4f}span.regressed,tr.regressed{color:#d0342c}
span.failed,tr.failed{color:#e08a1e}
tr.unchanged_solved,tr.unchanged_unsolved{color:#555}
.plots img{max-width:100%;margin:6px;border:1px solid #eee}
.sample{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:12px 0}
section.sample h3{margin:0 0 6px;font-size:15px;color:#222}
details.sample summary{cursor:pointer;color:#222}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}
@media (max-width:900px){.pair{grid-template-columns:1fr}}
.trace{background:#fafafa;border:1px solid #eee;border-radius:4px;padding:6px 8px;min-width:0}
.trace h4{margin:0 0 6px;font-size:13px}
.msg{border-left:3px solid #ccc;padding-left:6px;margin:6px 0}
.msg.assistant{border-color:#3b6fd8}.msg.tool{border-color:#e08a1e}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font-size:12px}
.call{font-size:12px;word-break:break-word}
.answer{border-left:3px solid #2e9d4f;padding-left:6px;margin:6px 0}
.grade ul{margin:2px 0;font-size:12px}
.error{color:#b00;font-weight:bold;margin-top:6px}
"""


def render_html(
    comparison: Comparison,
    base: list[Trajectory],
    tuned: list[Trajectory],
    *,
    references: dict[str, str],
    title: str,
    plots: dict[str, Path],
    release: ReleaseCheck | None = None,
) -> str:
    """The whole report as one HTML document (no scripts, no external assets)."""
    rows = _Rows(by_row(base), by_row(tuned), references)
    gate, figures = release_sections(release)
    improvements = sorted(
        (s for s in comparison.samples if s.outcome == "improved"),
        key=lambda s: (-(s.reward_delta or 0.0), s.id),
    )
    failed = [s for s in comparison.samples if s.outcome == "failed"]
    body = "".join(
        [
            f"<h1>{_e(title)}</h1>",
            gate,
            _summary_html(comparison),
            figures,
            _flips_html(comparison, rows) if release is not None else "",
            _slices_html(comparison),
            _plots_html(plots),
            _list_html("Regressions, worst first", comparison.regressions(), rows, False),
            _list_html("Improvements, best first", improvements, rows, True),
            _list_html("Failed rows", failed, rows, True),
            _table_html(comparison),
        ]
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}{RELEASE_CSS}</style></head><body>{body}"
        "</body></html>\n"
    )


def write_report(
    comparison: Comparison,
    base: list[Trajectory],
    tuned: list[Trajectory],
    out_dir: Path,
    *,
    references: dict[str, str] | None = None,
    title: str = "toolgym eval",
    release: ReleaseCheck | None = None,
) -> ReportFiles:
    """Write the PNGs and `report.html` (which embeds them) into out_dir."""
    plots = plot_files(comparison, out_dir)
    document = render_html(
        comparison,
        base,
        tuned,
        references=references or {},
        title=title,
        plots=plots,
        release=release,
    )
    path = out_dir / "report.html"
    path.write_text(document, encoding="utf-8")
    return ReportFiles(html=path, plots=plots)
