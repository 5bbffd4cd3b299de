"""Per-step metrics: JSONL, TensorBoard, a live table on the terminal, curves as a PNG."""

from __future__ import annotations

import json
import math
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
    ("tokens_per_s", "{:>12.0f}"),
)


class MetricsLog:
    def __init__(self, output_dir: Path, *, echo: bool = True) -> None:
        self.path = output_dir / "metrics.jsonl"
        self.echo = echo
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():  # a resumed run keeps its history
            self.rows = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        from torch.utils.tensorboard import SummaryWriter

        self.board = SummaryWriter(str(output_dir / "tensorboard"))
        self._header_shown = False

    def log(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if r["step"] != row["step"]] + [row]
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if isinstance(value, int | float) and key != "step" and math.isfinite(value):
                self.board.add_scalar(key, value, row["step"])
        self.board.flush()
        if self.echo:
            if not self._header_shown:
                print("  ".join(f"{name:>{len(fmt.format(0))}}" for name, fmt in COLUMNS))
                self._header_shown = True
            print("  ".join(_cell(row.get(name), fmt) for name, fmt in COLUMNS), flush=True)

    def plot(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = ("reward_mean", "val_reward", "tool_calls", "kl_to_ref", "loss", "entropy")
        figure, axes = plt.subplots(2, 3, figsize=(13, 6.5))
        for axis, key in zip(axes.flat, panels, strict=True):
            points = [(r["step"], r[key]) for r in self.rows if r.get(key) is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", markersize=3)
            axis.set_title(key)
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
        figure.tight_layout()
        out = self.path.parent / "curves.png"
        figure.savefig(out, dpi=110)
        plt.close(figure)
        return out

    def close(self) -> None:
        self.board.close()


def _cell(value: Any, fmt: str) -> str:
    width = len(fmt.format(0))
    if value is None:
        return "-".rjust(width)
    return fmt.format(value)
