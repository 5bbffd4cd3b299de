"""The demo's story in figures and one picture: headroom before, the val curve, pass@1 after.

figures = eval_figures(outcome.comparison.summary)
plot_demo(work / "demo.png", trained.val_curve, headroom, outcome.comparison.summary)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollout.compare import ComparisonSummary
from rollout.prior_check import PriorCheck


def prior_figures(check: PriorCheck) -> dict[str, Any]:
    """The headroom check on val before GRPO: how much GRPO can hope to win."""
    k = check.attempts_per_row
    return {
        "rows": check.rows,
        "attempts": k,
        "pass_at_1": round(check.pass_at_1, 3),
        f"pass_at_{k}": round(check.pass_at_k, 3),
        "headroom": round(check.headroom, 3),
    }


def eval_figures(summary: ComparisonSummary) -> dict[str, Any]:
    """Base (warm-started) vs tuned on every val row, same seeds."""
    k = summary.base_pass.k
    return {
        "val_rows": summary.rows,
        "val_attempts": k,
        "val_reward_base": round(summary.base_reward, 3),
        "val_reward_tuned": round(summary.tuned_reward, 3),
        "val_reward_gain": round(summary.reward_delta, 3),
        "val_pass_at_1_base": round(summary.base_pass.pass_at_1, 3),
        "val_pass_at_1_tuned": round(summary.tuned_pass.pass_at_1, 3),
        f"val_pass_at_{k}_base": round(summary.base_pass.pass_at_k, 3),
        f"val_pass_at_{k}_tuned": round(summary.tuned_pass.pass_at_k, 3),
        "improved_rows": summary.improved,
        "regressed_rows": summary.regressed,
    }


def plot_demo(
    path: Path,
    val_curve: list[tuple[int, float]],
    curve_rows: int | None,
    summary: ComparisonSummary,
    minutes: float,
) -> Path:
    """Two panels: val reward at each of GRPO's eval points; pass@1 and pass@k before/after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curve, bars) = plt.subplots(1, 2, figsize=(11, 4.2))
    if val_curve:
        steps, rewards = zip(*val_curve, strict=True)
        curve.plot(steps, rewards, marker="o", color="tab:blue")
    rows = f"{curve_rows} val rows" if curve_rows else "val rows"
    curve.set(xlabel="GRPO step", ylabel="mean reward", title=f"during training ({rows}, T=1)")
    curve.set_ylim(0, 1)
    curve.grid(alpha=0.3)
    k = summary.base_pass.k
    labels = ["pass@1", f"pass@{k}"]
    base = [summary.base_pass.pass_at_1, summary.base_pass.pass_at_k]
    tuned = [summary.tuned_pass.pass_at_1, summary.tuned_pass.pass_at_k]
    for offset, values, name, color in (
        (-0.2, base, "warm-started", "tab:gray"),
        (0.2, tuned, "after GRPO", "tab:green"),
    ):
        drawn = bars.bar([i + offset for i in range(2)], values, 0.4, label=name, color=color)
        bars.bar_label(drawn, fmt="%.3f")
    bars.set_xticks(range(2), labels)
    bars.set_ylim(0, 1)
    bars.set_title(f"all {summary.rows} val rows, {k} attempts each, same seeds")
    bars.legend(loc="upper left")
    figure.suptitle(
        f"make demo: val reward {summary.base_reward:.3f} -> {summary.tuned_reward:.3f} "
        f"({summary.reward_delta:+.3f}), {summary.improved} rows improved, "
        f"{summary.regressed} regressed, {minutes:.1f} min"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
