"""The metrics record, the live table and the curves show a figure only where it was measured."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from trainer.metrics import MetricsLog, curve_series, table_columns, table_header, table_row


def step_row(step: int, kl_to_ref: float | None) -> dict[str, Any]:
    return {
        "step": step,
        "val_reward": None,
        "reward_mean": 0.25 * step,
        "tool_calls": 1.5,
        "kl_to_ref": kl_to_ref,
        "loss": 0.125,
        "entropy": 2.0,
    }


def cell(line: str, header: str, name: str) -> str:
    """The text of `name`'s column in a table line: no cell holds a space, so the n-th word of
    the line is the n-th column's."""
    names, cells = header.split(), line.split()
    assert len(cells) == len(names), (line, header)
    return cells[names.index(name)]


def test_an_unmeasured_kl_is_a_dash_in_the_table_not_zero() -> None:
    header = table_header()
    line = table_row(step_row(1, None))
    assert cell(line, header, "kl_to_ref") == "-"
    assert "0.0000" not in line  # kl_to_ref's format; no other column prints 4 decimals here
    assert cell(table_row(step_row(1, 0.0123)), header, "kl_to_ref") == "0.0123"


def test_a_run_without_kl_has_no_kl_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = MetricsLog(tmp_path, unmeasured=("kl_to_ref",))
    log.log(step_row(1, None))
    log.close()
    header, line = capsys.readouterr().out.splitlines()
    assert "kl_to_ref" not in header
    assert "0.0000" not in line
    assert cell(line, header, "loss") == "0.1250"
    assert "kl_to_ref" in table_header(table_columns())  # shown by default


def test_a_run_with_kl_shows_it_in_every_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = MetricsLog(tmp_path)
    log.log(step_row(1, 0.0123))
    log.close()
    header, line = capsys.readouterr().out.splitlines()
    assert cell(line, header, "kl_to_ref") == "0.0123"
    (record,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(record["kl_to_ref"]) and record["kl_to_ref"] == pytest.approx(0.0123)


def test_an_unmeasured_kl_is_null_in_the_jsonl(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, echo=False, unmeasured=("kl_to_ref",))
    log.log(step_row(1, None))
    log.close()
    (record,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "kl_to_ref" in record and record["kl_to_ref"] is None  # every row keeps its keys


def test_curves_leave_out_figures_never_measured() -> None:
    rows = [{"step": 0, "val_reward": 0.1}, step_row(1, None), step_row(2, None)]
    series = dict(curve_series(rows))
    assert list(series) == ["reward_mean", "val_reward", "tool_calls", "loss", "entropy"]
    assert series["val_reward"] == [(0, 0.1)]  # only the steps that measured it
    assert series["reward_mean"] == [(1, 0.25), (2, 0.5)]


def test_curves_draw_kl_where_it_was_measured() -> None:
    series = dict(curve_series([step_row(1, 0.01), step_row(2, 0.03)]))
    assert series["kl_to_ref"] == [(1, 0.01), (2, 0.03)]
    assert "val_reward" not in series  # never measured in these rows


def test_the_plot_is_written_with_and_without_kl(tmp_path: Path) -> None:
    for kl in (None, 0.02):
        out = tmp_path / f"kl-{kl}"
        out.mkdir()
        log = MetricsLog(out, echo=False)
        log.log(step_row(1, kl))
        assert log.plot().stat().st_size > 0
        log.close()
    empty = tmp_path / "empty"
    empty.mkdir()
    log = MetricsLog(empty, echo=False)
    assert log.plot().is_file()  # stopped before any step: still a figure, saying so
    log.close()
