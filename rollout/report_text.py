"""Base vs tuned in plain text: the terminal digest `toolgym eval` prints, and the number and
text formatting the HTML report shares with it."""

from __future__ import annotations

from rollout.compare import Comparison, by_row, shown_slices, worst_slice
from rollout.summary import PassRates
from rollout.trajectory import Trajectory


def num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def cut(text: str, limit: int) -> str:
    """Cut and say how much was dropped, so a short result is never mistaken for a whole one."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more chars)"


def spread_text(comparison: Comparison, key: str) -> str:
    spread = comparison.slice_spread.get(key)
    if spread is None:
        return f"no spread: fewer than 2 slices of ≥ {comparison.min_slice_rows} rows"
    return f"spread {spread:.3f}"


def terminal_summary(
    comparison: Comparison, *, top: int = 5, tuned: list[Trajectory] | None = None
) -> str:
    """Plain text: the headline, the slices with their spread, the worst regressions.

    `tuned` is optional: with it, each regression shows the tuned policy's (first) answer.
    """
    s = comparison.summary
    lines = [
        f"rows {s.rows} ({s.compared} compared): reward {s.base_reward:.3f} → "
        f"{s.tuned_reward:.3f} ({s.reward_delta:+.3f}), tool calls {s.tool_calls_delta:+.2f}/row",
        f"improved {s.improved}, regressed {s.regressed}, unchanged solved "
        f"{s.unchanged_solved}, unchanged never solved {s.unchanged_unsolved}, failed {s.failed}",
        _pass_line(s.base_pass, s.tuned_pass),
    ]
    for key in sorted(comparison.slices):
        lines += _slice_lines(comparison, key)
    if comparison.skipped_slice_keys:
        skipped = "; ".join(
            f"{k} ({why})" for k, why in sorted(comparison.skipped_slice_keys.items())
        )
        lines.append(f"not sliced by: {skipped}")
    regressions = comparison.regressions()[:top]
    if regressions:
        lines.append(f"top regressions ({len(regressions)} of {s.regressed}, worst first):")
    answers = _first_answers(tuned or [])
    for r in regressions:
        answer = answers.get(r.id)
        shown = f"  tuned: {cut(' '.join(answer.split()), 60)!r}" if answer is not None else ""
        lines.append(
            f"  {r.id}  {num(r.base.reward)} → {num(r.tuned.reward)} "
            f"({num(r.reward_delta, True)}){shown}"
        )
    return "\n".join(lines)


def _pass_line(base: PassRates, tuned: PassRates) -> str:
    k = max(base.k, tuned.k)
    if k <= 1:  # pass@1 is all one attempt can tell; a headroom of 0 would be made up
        return (
            f"pass@1 {base.pass_at_1:.3f} → {tuned.pass_at_1:.3f} (1 attempt per row: "
            "--attempts N also measures pass@N and the headroom RL could still win)"
        )
    return (
        f"pass@1 {base.pass_at_1:.3f} → {tuned.pass_at_1:.3f}, pass@{k} {base.pass_at_k:.3f} → "
        f"{tuned.pass_at_k:.3f}, headroom {base.headroom:.3f} → {tuned.headroom:.3f} "
        "(pass@k − pass@1: about the most RL can still win)"
    )


def _slice_lines(comparison: Comparison, key: str) -> list[str]:
    stats = comparison.slices[key]
    shown = shown_slices(stats, comparison.min_slice_rows)
    many = " per item of its list" if key in comparison.list_slice_keys else ""
    lines = [f"by {key}{many} ({spread_text(comparison, key)}):"]
    worst = worst_slice(stats, comparison.min_slice_rows)
    width = max(len(x.value) for x in shown)
    for x in shown:
        mark = "  <- worst" if x is worst else ""
        lines.append(
            f"  {x.value:<{width}}  n={x.n:<4} {x.base_reward:.3f} → {x.tuned_reward:.3f}  "
            f"{x.reward_delta:+.3f}  (+{x.improved} -{x.regressed}){mark}"
        )
    if len(shown) < len(stats):
        lines.append(
            f"  … {len(stats) - len(shown)} more values (report.html's table lists every row)"
        )
    return lines


def _first_answers(trajectories: list[Trajectory]) -> dict[str, str | None]:
    return {
        row: min(attempts, key=lambda t: t.sample_index).answer
        for row, attempts in by_row(trajectories).items()
    }
