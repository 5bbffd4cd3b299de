from __future__ import annotations

from toolservers.htmltext import html_to_text

TABLE = """
<table>
  <caption>Income (USD millions)</caption>
  <thead><tr><th>Line item</th><th>Q3 2025</th><th>Q3 2024</th></tr></thead>
  <tbody>
    <tr><td>Revenue</td><td>1,234.5</td><td>987.0</td></tr>
    <tr><td>Net income</td><td>-12.3</td><td>45.6</td></tr>
    <tr><td>Operating margin</td><td>13.4%</td><td>9.0%</td></tr>
  </tbody>
</table>
"""


def test_table_columns_are_aligned_with_header_underline() -> None:
    lines = html_to_text(TABLE).splitlines()
    assert lines[0] == "Income (USD millions)"
    header, underline, *body = lines[1:]
    assert [c.strip() for c in header.split("|")] == ["Line item", "Q3 2025", "Q3 2024"]
    assert set(underline) == {"-", "+"}
    # Every separator sits at the same offset on every row, so columns line up.
    pipes = [i for i, ch in enumerate(header) if ch == "|"]
    assert pipes == [i for i, ch in enumerate(underline) if ch == "+"]
    for row in body:
        assert [i for i, ch in enumerate(row) if ch == "|"] == pipes
    # Numbers are right-aligned: their last characters share a column.
    first_num_end = {len(row.split(" | ")[0]) + 3 + len(row.split(" | ")[1]) for row in body}
    assert len(first_num_end) == 1
    assert body[0].split(" | ")[1] == "1,234.5"
    assert body[1].split(" | ")[1] == "  -12.3"
    assert body[2].split(" | ")[1] == "  13.4%"
    assert body[0].startswith("Revenue          |")


def test_row_header_cells_do_not_turn_rows_into_headers() -> None:
    html = (
        "<table><tr><th></th><th>FY2025</th></tr>"
        "<tr><th>Revenue</th><td>10.0</td></tr><tr><th>Cost</th><td>4.0</td></tr></table>"
    )
    lines = html_to_text(html).splitlines()
    assert len(lines) == 4
    assert set(lines[1]) == {"-", "+"}
    assert lines[2] == "Revenue |   10.0"
    assert lines[3] == "Cost    |    4.0"


def test_table_without_header_has_no_underline_and_colspan_keeps_width() -> None:
    html = (
        "<table><tr><td>a</td><td>b</td><td>c</td></tr>"
        "<tr><td colspan='2'>wide</td><td>d</td></tr></table>"
    )
    assert html_to_text(html).splitlines() == ["a    | b | c", "wide |   | d"]


def test_entities_are_unescaped_and_whitespace_collapsed() -> None:
    html = (
        "<p>Wren &amp; Lowell&nbsp;Furniture &lt;WRLF&gt;   says\n\n"
        "  &quot;hi&quot; &#39;x&#39; &#x2014;</p>"
    )
    assert html_to_text(html) == "Wren & Lowell Furniture <WRLF> says \"hi\" 'x' \u2014"


def test_script_style_and_head_are_dropped() -> None:
    html = (
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        "<script>var secret = 1;</script><p>visible</p><noscript>no</noscript></body></html>"
    )
    assert html_to_text(html) == "visible"


def test_headings_paragraphs_and_lists() -> None:
    html = (
        "<h1>Acme</h1><p>First   paragraph.</p><h2>Risks</h2><p>Second<br>line two</p>"
        "<ul><li>one</li><li>two<ol><li>a</li><li><p>b</p></li></ol></li></ul><div>after</div>"
    )
    assert html_to_text(html) == (
        "# Acme\n\nFirst paragraph.\n\n## Risks\n\nSecond\nline two\n\n"
        "- one\n- two\n  1. a\n  2. b\n\nafter"
    )


def test_inline_markup_does_not_split_words_or_blocks() -> None:
    assert html_to_text("<p>Net <b>income</b> rose <i>8</i>%.</p>") == "Net income rose 8%."


def test_malformed_and_empty_input() -> None:
    assert html_to_text("") == ""
    text = html_to_text("<p>open <table><tr><td>x<td>y</table> <li>dangling")
    assert text.splitlines()[0] == "open"
    assert "x | y" in text
    assert text.endswith("- dangling")


def test_preformatted_text_keeps_its_layout() -> None:
    assert html_to_text("<pre>a   b\n  c</pre><p>z</p>") == "a   b\n  c\n\nz"
