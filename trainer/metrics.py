"""Per-step metrics: JSONL, TensorBoard, a live table on the terminal, curves as a PNG.

A figure not measured at a step is None: null in metrics.jsonl, "-" in the table, no point in
TensorBoard or on the curves. Never 0.0, which would read as a measurement (a kl_to_ref of 0
says "the policy has not moved", not "KL was not computed"). kl_to_ref is measured only when
kl_coef > 0; a run that never measures a figure can drop its table column (`unmeasured`), and
a curve with no measured point gets no panel. The judge_* columns are a RULER run's (reward.ruler).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    ("step", "{:>5}"),
    ("val_reward", "{:>10.3f}"),
    ("reward_mean", "{:>11.3f}"),
    ("reward_std", "{:>10.3f}"),
    ("tool_calls", "{:>10.2f}"),
    ("kl_to_ref", "{:>9.4f}"),
    ("loss", "{:>8.4f}"),
    ("grad_norm", "{:>9.3f}"),
    ("entropy", "{:>7.3f}"),
    ("zero_signal", "{:>11.2f}"),
    # what dynamic sampling bought: groups trained on, out of the prompts it took to find them
    ("signal_groups", "{:>13}"),
    ("prompts_played", "{:>14}"),
    ("tokens_per_s", "{:>12.0f}"),
    # with reward.ruler: what judging cost this step, and the groups it took out of the update
    ("judge_calls", "{:>11}"),
    ("judge_cache_hits", "{:>16}"),
    ("judge_failed_groups", "{:>19}"),
    ("judge_prompt_tokens", "{:>19}"),
    ("judge_completion_tokens", "{:>23}"),
)
JUDGE_COLUMNS = tuple(name for name, _ in COLUMNS if name.startswith("judge_"))
PANELS = ("reward_mean", "val_reward", "tool_calls", "kl_to_ref", "loss", "entropy")
PANELS_PER_ROW = 3

Column = tuple[str, str]  # (metric name, format of its cell)
Series = tuple[str, list[tuple[int, float]]]  # (metric name, its measured (step, value) points)


class MetricsLog:
    def __init__(
        self,
        output_dir: Path,
        *,
        echo: bool = True,
        unmeasured: Collection[str] = (),
        write: bool = True,
    ) -> None:
        """`unmeasured`: figures this run never measures (kl_to_ref with kl_coef 0); the table
        leaves their columns out rather than showing a column of dashes. `write` False: rows
        are kept in memory only (a data-parallel rank other than 0; rank 0 writes)."""
        self.path = output_dir / "metrics.jsonl"
        self.echo = echo and write
        self.write = write
        self.columns = table_columns(unmeasured)
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():  # a resumed run keeps its history
            self.rows = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        self.board: Any = None
        if write:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(output_dir / "tensorboard"))
        self._header_shown = False

    def log(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if r["step"] != row["step"]] + [row]
        if not self.write:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if isinstance(value, int | float) and key != "step" and math.isfinite(value):
                self.board.add_scalar(key, value, row["step"])
        self.board.flush()
        if self.echo:
            if not self._header_shown:
                print(table_header(self.columns))
                self._header_shown = True
            print(table_row(row, self.columns), flush=True)

    def plot(self) -> Path:
        out = self.path.parent / "curves.png"
        if not self.write:
            return out  # rank 0 draws it
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        series = curve_series(self.rows)
        grid_rows = max(1, math.ceil(len(series) / PANELS_PER_ROW))
        size = (13, 3.25 * grid_rows)
        figure, axes = plt.subplots(grid_rows, PANELS_PER_ROW, figsize=size, squeeze=False)
        if not series:  # a run stopped before its first step still gets a file that says so
            figure.suptitle("no measured values yet")
        for axis in axes.flat[len(series) :]:
            axis.set_axis_off()  # the grid's unused cells stay blank
        for axis, (key, points) in zip(axes.flat, series, strict=False):
            axis.plot(*zip(*points, strict=True), marker="o", markersize=3)
            axis.set_title(key)
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(out, dpi=110)
        plt.close(figure)
        return out

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def curve_series(rows: Sequence[dict[str, Any]], panels: Sequence[str] = PANELS) -> list[Series]:
    """The curves to draw: each panel's measured (step, value) points, in panel order. A figure
    with no measured point (kl_to_ref with kl_coef 0, val_reward without val rows) gets no
    panel: an empty or flat-zero axis would look like a measurement."""
    series = []
    for key in panels:
        points = [(int(r["step"]), float(r[key])) for r in rows if _measured(r.get(key))]
        if points:
            series.append((key, points))
    return series


def table_columns(unmeasured: Collection[str] = ()) -> tuple[Column, ...]:
    return tuple(column for column in COLUMNS if column[0] not in unmeasured)


def table_header(columns: Sequence[Column] = COLUMNS) -> str:
    return "  ".join(f"{name:>{len(fmt.format(0))}}" for name, fmt in columns)


def table_row(row: dict[str, Any], columns: Sequence[Column] = COLUMNS) -> str:
    return "  ".join(_cell(row.get(name), fmt) for name, fmt in columns)


def _measured(value: Any) -> bool:
    # bool is an int: a stray True must not plot as 1.0
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any, fmt: str) -> str:
    width = len(fmt.format(0))
    if value is None:
        return "-".rjust(width)
    return fmt.format(value)
