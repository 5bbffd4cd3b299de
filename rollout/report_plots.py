"""The eval report's plots: reward-delta histogram, per-slice bars, base vs tuned scatter.

`Figure` without pyplot: no global backend state, so plotting is safe in any process (Agg).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rollout.compare import Comparison, SliceStats, shown_slices, worst_slice

COLOURS = {
    "improved": "#2e9d4f",
    "regressed": "#d0342c",
    "unchanged_solved": "#3b6fd8",
    "unchanged_unsolved": "#9a9a9a",
    "failed": "#e08a1e",
}


def plot_files(comparison: Comparison, out_dir: Path) -> dict[str, Path]:
    """Write the three PNGs; returns name -> path (delta_histogram, slices, scatter)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "delta_histogram": _delta_histogram(comparison),
        "slices": _slice_bars(comparison),
        "scatter": _scatter(comparison),
    }
    paths = {}
    for name, figure in figures.items():
        paths[name] = out_dir / f"{name}.png"
        figure.savefig(paths[name], dpi=110)
    return paths


def _delta_histogram(comparison: Comparison) -> Figure:
    deltas = [s.reward_delta for s in comparison.samples if s.reward_delta is not None]
    figure = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = figure.add_subplot()
    if not deltas:
        return _empty(figure, ax, "no row has a reward on both sides")
    low, high = min(-1.0, *deltas), max(1.0, *deltas)
    ax.hist(deltas, bins=np.linspace(low, high, 21).tolist(), color="#6a7fb0", edgecolor="white")
    ax.axvline(0.0, color="black", linewidth=0.8)
    mean = comparison.summary.reward_delta
    ax.axvline(mean, color=COLOURS["improved" if mean >= 0 else "regressed"], linestyle="--")
    ax.set(xlabel="reward delta per row (tuned − base)", ylabel="rows")
    ax.set_title(f"reward delta (mean {mean:+.3f}, n={len(deltas)})")
    return figure


def _slice_bars(comparison: Comparison) -> Figure:
    """One panel per key, stacked: a key with a dozen values needs the whole width."""
    keys = sorted(comparison.slices)
    shown = {key: shown_slices(comparison.slices[key], comparison.min_slice_rows) for key in keys}
    bars = max((len(stats) for stats in shown.values()), default=0)
    size = (max(6.4, 0.75 * bars + 1.5), max(4.0, 3.4 * len(keys)))
    figure = Figure(figsize=size, layout="constrained")
    if not keys:
        return _empty(figure, figure.add_subplot(), "no metadata key to slice by")
    for index, key in enumerate(keys, start=1):
        _slice_panel(figure.add_subplot(len(keys), 1, index), key, shown[key], comparison)
    return figure


def _slice_title(key: str, shown: list[SliceStats], comparison: Comparison) -> str:
    spread = comparison.slice_spread[key]
    rows = comparison.min_slice_rows
    said = "fewer than 2" if spread is None else f"spread {spread:.2f} over"
    title = f"{key} ({said} slices of ≥ {rows} rows; the worst in bold)"
    total = len(comparison.slices[key])
    return title if len(shown) == total else f"{title}: {len(shown)} of {total} values shown"


def _slice_panel(ax: Axes, key: str, stats: list[SliceStats], comparison: Comparison) -> None:
    x = np.arange(len(stats))
    ax.bar(x - 0.2, [s.base_reward for s in stats], 0.4, label="base", color="#9fb3d9")
    ax.bar(x + 0.2, [s.tuned_reward for s in stats], 0.4, label="tuned", color="#2f4f8f")
    worst = worst_slice(comparison.slices[key], comparison.min_slice_rows)
    for i, s in enumerate(stats):
        # Red says "got worse"; the worst slice is in bold, red only if it did get worse.
        colour = COLOURS["regressed"] if s.reward_delta < 0 else "black"
        weight = "bold" if s is worst else "normal"
        top = max(s.base_reward, s.tuned_reward)
        ax.annotate(
            f"{s.reward_delta:+.2f}", (i, top), ha="center", va="bottom", color=colour,
            fontweight=weight,
        )  # fmt: skip
    crowded = len(stats) > 6  # long values (company names) overlap unless turned
    labels = [f"{_short(s.value)}{' ' if crowded else chr(10)}(n={s.n})" for s in stats]
    ax.set_xticks(x, labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylim(0, max(1.0, *(max(s.base_reward, s.tuned_reward) for s in stats)) * 1.15)
    ax.set(ylabel="mean reward", title=_slice_title(key, stats, comparison))
    # Outside the axes: inside, it hides the delta written over the last bars.
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")


def _short(value: str, limit: int = 22) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _scatter(comparison: Comparison) -> Figure:
    figure = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = figure.add_subplot()
    both = [s for s in comparison.samples if s.reward_delta is not None]
    if not both:
        return _empty(figure, ax, "no row has a reward on both sides")
    rng = np.random.default_rng(0)  # jitter: rewards are often 0/1, identical points stack
    for outcome, colour in COLOURS.items():
        group = [s for s in both if s.outcome == outcome]
        if group:
            x = np.array([s.base.reward or 0.0 for s in group])
            y = np.array([s.tuned.reward or 0.0 for s in group])
            x, y = x + rng.uniform(-0.02, 0.02, len(x)), y + rng.uniform(-0.02, 0.02, len(y))
            ax.scatter(x, y, s=22, alpha=0.75, color=colour, label=f"{outcome} ({len(group)})")
    high = max(1.0, *(max(s.base.reward or 0.0, s.tuned.reward or 0.0) for s in both))
    ax.plot([0, high], [0, high], color="black", linewidth=0.8, linestyle=":")
    ax.set(xlabel="base reward", ylabel="tuned reward", title="per row (jittered)")
    ax.set_xlim(-0.05, high + 0.05)
    ax.set_ylim(-0.05, high + 0.05)
    ax.legend(loc="lower right", fontsize="small")
    return figure


def _empty(figure: Figure, ax: Axes, message: str) -> Figure:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return figure
