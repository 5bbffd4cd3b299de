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
from rollout.report import ReportFiles, render_html, write_report
from rollout.report_text import terminal_summary
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


def test_slices_table_marks_the_worst_slice(
    report: ReportFiles,
    comparison: Comparison,
    runs: tuple[list[Trajectory], list[Trajectory]],
) -> None:
    document, _ = parse(report.html)
    assert set(comparison.slices) == {"task_type", "difficulty"}
    # compute: r3 -1.0, r4 -0.5, r6 0.0 -> -0.5; lookup: +1.0, +0.25, 0.0 -> +0.4167
    assert "<tr class=worst><td>compute</td>" in document
    # 3 rows a slice, under the minimum of 5: the report says why it gives no spread.
    assert comparison.slice_spread["task_type"] is None
    assert "no spread: fewer than 2 slices of ≥ 5 rows" in document
    assert "count only slices of ≥ 5 rows" in document
    smaller = compare(*runs, min_slice_rows=3)
    shown = render_html(smaller, *runs, references={}, title="t", plots={})
    assert f"spread {smaller.slice_spread['task_type']:.3f}" in shown


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
    assert "by task_type (no spread: fewer than 2 slices of ≥ 5 rows):" in text
    # base: 4 of 6 rows solved in 1 attempt; tuned: r2 twice (0.75 both), the same 4 rows.
    assert "pass@1 0.667 → 0.667, pass@2 0.667 → 0.667, headroom 0.000 → 0.000" in text
    task_type = text.split("by task_type")[1]
    assert "compute" in task_type.split("<- worst")[0].splitlines()[-1]
    regression_lines = [line for line in text.splitlines() if line.startswith("  r")]
    assert regression_lines[0].startswith("  r3  1.000 → 0.000 (-1.000)")
    assert XSS in regression_lines[0]  # plain text: shown as is
    assert regression_lines[1].startswith("  r4")
    assert len(terminal_summary(comparison, top=1).splitlines()) == len(text.splitlines()) - 1
    assert "not sliced by" not in text  # every key sliced


def attempt(row: str, index: int, reward: float, metadata: dict[str, Any]) -> Trajectory:
    return Trajectory(
        row_id=row,
        group_id=row,
        sample_index=index,
        env_id="toolgym/FilingsQA-v0",
        policy_version="v",
        messages=[{"role": "user", "content": f"question {row}"}],
        answer="42",
        reward=reward,
        metadata=metadata,
    )


def test_pass_rates_table_and_what_it_means(tmp_path: Path) -> None:
    # 3 rows x 4 attempts; base: 5 of 12 successes, 2 rows solved once; tuned solves all.
    rewards = [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    base = [attempt(f"r{i}", j, r, {}) for i, row in enumerate(rewards) for j, r in enumerate(row)]
    tuned = [attempt(f"r{i}", j, 1.0, {}) for i in range(3) for j in range(4)]
    comparison = compare(base, tuned)
    document = render_html(comparison, base, tuned, references={}, title="t", plots={})
    assert "<th>pass@1</th><th>pass@4</th><th>headroom</th>" in document
    assert "<tr><td>base</td><td>0.417</td><td>0.667</td><td>0.250</td></tr>" in document
    assert "<tr><td>tuned</td><td>1.000</td><td>1.000</td><td>0.000</td></tr>" in document
    assert "about the most RL can still win" in document
    text = terminal_summary(comparison)
    assert "pass@1 0.417 → 1.000, pass@4 0.667 → 1.000, headroom 0.250 → 0.000" in text
    single = compare(base[::4], tuned[::4])  # one attempt a row: no pass@k, no headroom
    document = render_html(single, [], [], references={}, title="t", plots={})
    assert "use --attempts N" in document and "<th>headroom</th>" not in document
    assert "<tr><td>base</td><td>0.667</td></tr>" in document
    assert "pass@1 0.667 → 1.000 (1 attempt per row: --attempts N" in terminal_summary(single)


# Demo-like rows: 12 companies with 6-17 rows each, 2 with 2 rows, and "Broken Co" with 5
# rows that all regress; one value each for task_type, difficulty, metrics and source.
COMPANIES = [(f"Company {i:02}", 17 - i) for i in range(12)] + [("Tiny A", 2), ("Tiny B", 2)]


def demo_metadata(company: str, quarter: int) -> dict[str, Any]:
    return {
        "companies": [company],
        "periods": [f"2024-Q{quarter}"],
        "metrics": ["operating_income"],
        "task_type": "lookup",
        "difficulty": "easy",
        "source": "synth",
        "recipe": {"template": "lookup", "seed": quarter},
    }


@pytest.fixture(scope="module")
def demo_runs() -> tuple[list[Trajectory], list[Trajectory]]:
    base, tuned = [], []
    rows = [(c, 0.0, 1.0) for c, n in COMPANIES for _ in range(n)] + [("Broken Co", 1.0, 0.0)] * 5
    for index, (company, before, after) in enumerate(rows):
        metadata = demo_metadata(company, index % 4 + 1)
        base.append(attempt(f"q{index:03}", 0, before, metadata))
        tuned.append(attempt(f"q{index:03}", 0, after, metadata))
    return base, tuned


def test_demo_like_rows_get_a_readable_slices_section(
    demo_runs: tuple[list[Trajectory], list[Trajectory]], tmp_path: Path
) -> None:
    comparison = compare(*demo_runs)
    assert set(comparison.slices) == {"companies", "periods"}
    files = write_report(comparison, *demo_runs, tmp_path)
    document, _ = parse(files.html)
    slices = document[document.index("<h2>Slices</h2>") : document.index("<h2>Plots</h2>")]
    assert "no metadata key to slice by" not in slices
    assert "<h3>companies <span class=muted>spread 2.000</span></h3>" in slices
    assert "list values: a row counts in the slice of each of its items" in slices
    assert "13 of 15 values shown: the most rows, and the worst" in slices
    assert "<tr class=worst><td>Broken Co</td><td>5</td>" in slices  # the fewest rows, shown
    assert "Company 11" in slices and "Tiny A" not in slices
    assert "<td>2024-Q1</td>" in slices
    assert "metadata keys not sliced by" in slices
    assert "<li><code>recipe</code>: dict values</li>" in slices
    assert "<li><code>source</code>: one value only (&#x27;synth&#x27;)</li>" in slices
    assert files.plots["slices"].read_bytes().startswith(PNG_MAGIC)
    # The per-sample table shows a list as its items, not as a Python list.
    assert "<td>Tiny A</td>" in document and "[&#x27;Tiny A&#x27;]" not in document

    text = terminal_summary(comparison)
    companies = text.split("by companies per item of its list (spread 2.000):")[1]
    assert "Broken Co" in companies.split("<- worst")[0].splitlines()[-1]
    assert "  … 2 more values (report.html's table lists every row)" in companies
    assert "not sliced by: difficulty (one value only ('easy'));" in text
    assert "recipe (dict values)" in text


def test_a_report_with_nothing_to_slice_says_which_keys_were_skipped(tmp_path: Path) -> None:
    metadata = demo_metadata("Northwind Energy", 3)
    base = [attempt(f"q{i}", 0, 0.0, metadata) for i in range(3)]
    tuned = [attempt(f"q{i}", 0, 1.0, metadata) for i in range(3)]
    document = render_html(compare(base, tuned), base, tuned, references={}, title="t", plots={})
    assert "no metadata key to slice by" in document
    assert "<li><code>companies</code>: one value only (&#x27;Northwind Energy&#x27;)</li>" in (
        document
    )


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


@pytest.mark.parametrize(
    ("deltas", "marks"),
    [
        # every slice improved: the worst (+0.20) in bold, none in red
        (
            (0.3, 0.2, 0.25),
            [("+0.30", False, False), ("+0.20", False, True), ("+0.25", False, False)],
        ),
        # one got worse: it is the worst, red and bold; a smaller gain stays black
        (
            (0.3, -0.1, 0.05),
            [("+0.30", False, False), ("-0.10", True, True), ("+0.05", False, False)],
        ),
    ],
)
def test_slice_bars_put_the_worst_in_bold_and_only_losses_in_red(
    comparison: Comparison, deltas: tuple[float, ...], marks: list[tuple[str, bool, bool]]
) -> None:
    from matplotlib.figure import Figure

    from rollout.compare import SliceStats
    from rollout.report_plots import COLOURS, _slice_panel

    stats = [
        SliceStats(key="period", value=f"Q{i}", n=6, base_reward=0.4, tuned_reward=0.4 + d,
                   reward_delta=d, improved=0, regressed=0)
        for i, d in enumerate(deltas)
    ]  # fmt: skip
    slicing = comparison.model_copy(update={"slices": {"period": stats}, "slice_spread": {}})
    slicing.slice_spread["period"] = max(deltas) - min(deltas)
    ax = Figure().add_subplot()
    _slice_panel(ax, "period", stats, slicing)
    found = [
        (t.get_text(), t.get_color() == COLOURS["regressed"], t.get_fontweight() == "bold")
        for t in ax.texts
    ]
    assert found == marks
