"""The eval report: self-contained, escaped HTML, valid plots, a terminal digest."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from rollout.compare import Comparison, compare
from rollout.report import ReportFiles, render_html, terminal_summary, write_report
from rollout.trajectory import EpisodeMetrics, Trajectory, TrajectoryError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LONG_RESULT = "revenue line " * 100  # 1300 chars: cut to 400
XSS = "<script>alert(1)</script>"

# row id -> (task_type, difficulty, base reward, tuned reward); None = failed.
ROWS: dict[str, tuple[str, str, float | None, float | None]] = {
    "r1": ("lookup", "easy", 0.0, 1.0),  # improved +1.0
    "r2": ("lookup", "hard", 0.5, 0.75),  # improved +0.25
    "r3": ("compute", "easy", 1.0, 0.0),  # regressed -1.0 (worst)
    "r4": ("compute", "hard", 1.0, 0.5),  # regressed -0.5
    "r5": ("lookup", "easy", 1.0, 1.0),  # unchanged, solved
    "r6": ("compute", "hard", 0.0, 0.0),  # unchanged, never solved
    "r7": ("compute", "easy", 1.0, None),  # failed
}


def trajectory(row: str, side: str, reward: float | None, index: int = 0) -> Trajectory:
    task_type, difficulty, _, _ = ROWS[row]
    answer = XSS if (row, side) == ("r3", "tuned") else f"answer {row} {side}"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You answer questions about filings."},
        {"role": "user", "content": f"What was the revenue in {row}?"},
        {
            "role": "assistant",
            "content": f"Searching for {row}.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {
                        "name": "search",
                        "arguments": json.dumps({"query": f"revenue {row}", "k": 3}),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "search", "content": LONG_RESULT},
        {"role": "assistant", "content": f"Final answer: {answer}"},
    ]
    failed = reward is None
    return Trajectory(
        row_id=row,
        group_id=f"{row}-{side}",
        sample_index=index,
        env_id="toolgym/FilingsQA-v0",
        policy_version=side,
        seed=index,
        messages=messages,
        answer=None if failed else answer,
        reward=reward,
        grade=None
        if failed
        else {
            "score": reward,
            "verdict": "correct" if reward == 1.0 else "wrong",
            "details": {"rule": "numeric", "answer_value": 12.5, "reference_value": 12.5},
        },
        metrics=EpisodeMetrics(turns=2, tool_calls=1 if side == "base" else 2),
        metadata={"task_type": task_type, "difficulty": difficulty},
        error=TrajectoryError(kind="policy", message="backend <503> unavailable")
        if failed
        else None,
    )


def side(name: str) -> list[Trajectory]:
    out = [trajectory(row, name, v[2] if name == "base" else v[3]) for row, v in ROWS.items()]
    if name == "tuned":  # a second attempt at r2 (same reward): the trace says "1 of 2"
        out.append(trajectory("r2", "tuned", ROWS["r2"][3], index=1))
    return out


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.regressions: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        if tag == "img":
            self.images.append(found.get("src") or "")
        if tag == "section" and "regressed" in (found.get("class") or ""):
            self.regressions.append(found.get("data-row") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def runs() -> tuple[list[Trajectory], list[Trajectory]]:
    return side("base"), side("tuned")


@pytest.fixture(scope="module")
def comparison(runs: tuple[list[Trajectory], list[Trajectory]]) -> Comparison:
    return compare(*runs)


@pytest.fixture(scope="module")
def report(
    runs: tuple[list[Trajectory], list[Trajectory]],
    comparison: Comparison,
    tmp_path_factory: pytest.TempPathFactory,
) -> ReportFiles:
    references = {row: f"reference <b>{row}</b>" for row in ROWS}
    out = tmp_path_factory.mktemp("report")
    return write_report(comparison, *runs, out, references=references, title="eval <v1>")


def parse(path: Path) -> tuple[str, Tags]:
    document = path.read_text(encoding="utf-8")
    parser = Tags()
    parser.feed(document)
    parser.close()
    return document, parser


def test_the_synthetic_comparison_has_the_intended_outcomes(comparison: Comparison) -> None:
    s = comparison.summary
    assert (s.improved, s.regressed, s.unchanged_solved, s.unchanged_unsolved, s.failed) == (
        2,
        2,
        1,
        1,
        1,
    )
    assert [r.id for r in comparison.regressions()] == ["r3", "r4"]


def test_html_is_escaped_and_has_no_script_element(report: ReportFiles) -> None:
    document, parser = parse(report.html)
    assert report.html.name == "report.html"
    assert "script" not in parser.tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert XSS in "".join(parser.text)  # shown to the reader as text
    assert "error (policy): backend &lt;503&gt; unavailable" in document  # r7, escaped
    assert "reference &lt;b&gt;r3&lt;/b&gt;" in document
    assert "<title>eval &lt;v1&gt;</title>" in document
    assert "http://" not in document and "https://" not in document  # no external assets


def test_html_lists_regressions_worst_first_with_both_traces(report: ReportFiles) -> None:
    document, parser = parse(report.html)
    assert parser.regressions == ["r3", "r4"]
    assert document.index("Regressions") < document.index("Improvements")
    assert "What was the revenue in r3?" in document
    assert "answer r3 base" in document  # base's trace next to tuned's
    assert "search" in document and "&quot;revenue r3&quot;" in document  # tool call + args
    assert "verdict <b>wrong</b>" in document and "reference_value" in document
    assert "attempt 1 of 2" in document  # r2's tuned side had two attempts
    assert "You answer questions about filings." not in document  # system prompt omitted


def test_long_tool_results_are_cut(report: ReportFiles) -> None:
    document, _ = parse(report.html)
    assert LONG_RESULT not in document
    assert f"… ({len(LONG_RESULT) - 400} more chars)" in document


def test_plots_are_embedded_and_written_as_png(report: ReportFiles) -> None:
    _, parser = parse(report.html)
    assert len(parser.images) == 3
    for src in parser.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :], validate=True).startswith(PNG_MAGIC)
    assert set(report.plots) == {"delta_histogram", "slices", "scatter"}
    for path in report.plots.values():
        assert path.parent == report.html.parent
        assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 5_000


def test_slices_table_marks_the_worst_slice(report: ReportFiles, comparison: Comparison) -> None:
    document, _ = parse(report.html)
    assert set(comparison.slices) == {"task_type", "difficulty"}
    # compute: r3 -1.0, r4 -0.5, r6 0.0 -> -0.5; lookup: +1.0, +0.25, 0.0 -> +0.4167
    assert "<tr class=worst><td>compute</td>" in document
    assert f"spread {comparison.slice_spread['task_type']:.3f}" in document


def test_rendering_without_rows_or_slices_still_works(tmp_path: Path) -> None:
    empty = compare([], [])
    files = write_report(empty, [], [], tmp_path)
    _, parser = parse(files.html)
    assert len(parser.images) == 3
    assert "none" in "".join(parser.text)
    assert render_html(empty, [], [], references={}, title="t", plots={}).count("<img") == 0


def test_terminal_summary(
    comparison: Comparison, runs: tuple[list[Trajectory], list[Trajectory]]
) -> None:
    text = terminal_summary(comparison, top=5, tuned=runs[1])
    assert "improved 2, regressed 2" in text
    assert "unchanged solved 1, unchanged never solved 1, failed 1" in text
    assert "by task_type (spread" in text
    task_type = text.split("by task_type")[1]
    assert "compute" in task_type.split("<- worst")[0].splitlines()[-1]
    regression_lines = [line for line in text.splitlines() if line.startswith("  r")]
    assert regression_lines[0].startswith("  r3  1.000 → 0.000 (-1.000)")
    assert XSS in regression_lines[0]  # plain text: shown as is
    assert regression_lines[1].startswith("  r4")
    assert len(terminal_summary(comparison, top=1).splitlines()) == len(text.splitlines()) - 1


def test_headless_chromium_renders_the_report(report: ReportFiles, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium binary")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            report.html.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert shot.read_bytes().startswith(PNG_MAGIC)
    assert shot.stat().st_size > 20_000
