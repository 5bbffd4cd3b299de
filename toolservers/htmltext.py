"""Render HTML as readable plain text for agents (the ``read`` tool) and for search chunking.

Only the stdlib parser is used so the renderer behaves identically everywhere. Output
conventions, chosen so an agent can parse them without seeing markup:

* headings become Markdown-style lines (``# Title``, ``## Section``);
* paragraphs and other blocks are separated by one blank line;
* list items become ``- item`` (``1. item`` inside ``<ol>``), nested lists are indented;
* tables become padded columns joined by ``" | "`` with a ``-+-`` underline below the
  header row, numeric cells right-aligned, so a reader can tell which column is which period.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

__all__ = ["html_to_text"]

_SKIP_TAGS = frozenset({"script", "style", "head", "template", "noscript"})
_BLOCK_TAGS = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "main",
        "nav",
        "aside",
        "blockquote",
        "figure",
        "figcaption",
        "address",
        "body",
        "html",
        "form",
        "dl",
        "dt",
        "dd",
        "ul",
        "ol",
        "hr",
    }
)
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
# <br> must survive whitespace collapsing, so it is carried as a control character.
_BR = "\x00"
_NUMERIC = re.compile(r"^[$(+\-−–]*\$?[\d,]*\.?\d+\)?%?$|^[—–-]$")


@dataclass
class _Table:
    rows: list[tuple[list[str], bool]] = field(default_factory=list)
    caption: str = ""
    cells: list[str] | None = None
    row_is_header: bool = False
    in_thead: bool = False
    cell_buf: list[str] | None = None
    span: int = 1
    row_has_td: bool = False


def _collapse(text: str) -> str:
    lines = (" ".join(part.split()) for part in text.split(_BR))
    return "\n".join(line for line in lines if line)


class _Renderer(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str]] = []
        self._buf: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self._lists: list[list[int]] = []  # per open list: [is_ordered, next_number]
        self._tables: list[_Table] = []
        self._in_caption = False
        self._pending_li = False

    # -- parser callbacks -------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif self._skip_depth:
            return
        elif tag == "br":
            self._write(_BR)
        elif self._tables and self._table_start(tag, dict(attrs)):
            return
        elif tag == "table":
            self._flush()
            self._tables.append(_Table())
        elif tag in ("ul", "ol"):
            self._flush()
            self._lists.append([tag == "ol", 1])
        elif tag == "li":
            self._flush()
            self._pending_li = True
        elif tag in _HEADINGS or tag in _BLOCK_TAGS:
            self._flush()
            if tag == "hr":
                self.blocks.append(("---", "p"))
        elif tag == "pre":
            self._flush()
            self._pre_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif self._skip_depth or (self._tables and self._table_end(tag)):
            return
        elif tag in _HEADINGS:
            self._flush(prefix="#" * _HEADINGS[tag] + " ", kind="h")
        elif tag == "li":
            self._flush()
            self._pending_li = False
        elif tag in ("ul", "ol"):
            self._flush()
            self._pending_li = False
            if self._lists:
                self._lists.pop()
        elif tag == "pre":
            self._flush(kind="pre")
            self._pre_depth = max(0, self._pre_depth - 1)
        elif tag in _BLOCK_TAGS:
            self._flush()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # Void elements written as <br/> must not open a skip region or a block twice.
        if tag in _SKIP_TAGS:
            return
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "hr"):
            self.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self._write(data)

    # -- helpers ----------------------------------------------------------------------
    def _write(self, text: str) -> None:
        table = self._tables[-1] if self._tables else None
        if table is None:
            self._buf.append(text)
        elif table.cell_buf is not None:
            table.cell_buf.append(text)
        elif self._in_caption:
            table.caption += text
        # Text between table cells is layout whitespace; it is dropped.

    def _flush(self, prefix: str = "", kind: str = "p") -> None:
        raw = "".join(self._buf)
        self._buf = []
        text = raw.replace(_BR, "\n").strip("\n") if kind == "pre" else _collapse(raw)
        if not text:
            return
        if self._pending_li:
            # The first block inside an <li> carries the bullet; later ones are plain.
            prefix, kind = self._li_marker() + prefix, "li"
            self._pending_li = False
        self.blocks.append((prefix + text, kind))

    def _li_marker(self) -> str:
        if not self._lists:
            return "- "
        indent = "  " * (len(self._lists) - 1)
        if not self._lists[-1][0]:
            return indent + "- "
        number = self._lists[-1][1]
        self._lists[-1][1] = number + 1
        return f"{indent}{number}. "

    def _table_start(self, tag: str, attrs: dict[str, str | None]) -> bool:
        table = self._tables[-1]
        if tag == "table":
            # Nested tables are flattened into the enclosing cell.
            return table.cell_buf is not None
        if tag == "caption":
            self._in_caption = True
        elif tag == "thead":
            table.in_thead = True
        elif tag == "tr":
            self._end_row(table)
            table.cells, table.row_is_header, table.row_has_td = [], table.in_thead, False
        elif tag in ("td", "th"):
            self._end_cell(table)
            if table.cells is None:
                table.cells, table.row_is_header, table.row_has_td = [], table.in_thead, False
            table.cell_buf = []
            # A row counts as a header when it sits in <thead> or holds only <th> cells.
            table.row_has_td = table.row_has_td or tag == "td"
            span = (attrs.get("colspan") or "1").strip()
            table.span = max(1, min(int(span), 50)) if span.isdigit() else 1
        elif tag in _BLOCK_TAGS or tag in _HEADINGS or tag == "li":
            self._write(" ")
        return True

    def _table_end(self, tag: str) -> bool:
        table = self._tables[-1]
        if tag == "caption":
            self._in_caption = False
        elif tag == "thead":
            table.in_thead = False
        elif tag in ("td", "th"):
            self._end_cell(table)
        elif tag == "tr":
            self._end_row(table)
        elif tag == "table":
            self._end_row(table)
            self._tables.pop()
            rendered = _render_table(table)
            if rendered:
                self.blocks.append((rendered, "table"))
        return True

    @staticmethod
    def _end_cell(table: _Table) -> None:
        if table.cell_buf is not None and table.cells is not None:
            text = _collapse("".join(table.cell_buf)).replace("\n", " ")
            # A spanning cell keeps its text in the first column it covers.
            table.cells.extend([text, *([""] * (table.span - 1))])
        table.cell_buf = None
        table.span = 1

    @staticmethod
    def _end_row(table: _Table) -> None:
        _Renderer._end_cell(table)
        if table.cells is not None and any(table.cells):
            table.rows.append((table.cells, table.row_is_header or not table.row_has_td))
        table.cells = None

    def close(self) -> None:
        super().close()
        while self._tables:
            self.handle_endtag("table")
        self._flush()


def _is_numeric_column(values: list[str]) -> bool:
    filled = [v for v in values if v]
    return bool(filled) and all(_NUMERIC.match(v) for v in filled)


def _render_table(table: _Table) -> str:
    rows = table.rows
    if not rows:
        return _collapse(table.caption)
    ncols = max(len(cells) for cells, _ in rows)
    grid = [cells + [""] * (ncols - len(cells)) for cells, _ in rows]
    n_header = 0
    while n_header < len(rows) - 1 and rows[n_header][1]:
        n_header += 1
    widths = [max(len(row[c]) for row in grid) for c in range(ncols)]
    body = grid[n_header:] or grid
    numeric_col = [_is_numeric_column([r[c] for r in body]) for c in range(ncols)]
    lines: list[str] = []
    caption = _collapse(table.caption)
    if caption:
        lines.append(caption)
    for i, row in enumerate(grid):
        cells = [
            row[c].rjust(widths[c]) if numeric_col[c] else row[c].ljust(widths[c])
            for c in range(ncols)
        ]
        lines.append(" | ".join(cells).rstrip())
        if i == n_header - 1:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def html_to_text(html: str) -> str:
    """Render ``html`` as plain text (see module docstring for the layout conventions)."""
    renderer = _Renderer()
    renderer.feed(html)
    renderer.close()
    out: list[str] = []
    prev_kind = ""
    for text, kind in renderer.blocks:
        if out:
            out.append("\n" if kind == prev_kind == "li" else "\n\n")
        out.append(text)
        prev_kind = kind
    return "".join(out).strip()
