"""Split a document's text into overlapping chunks along paragraph boundaries.

Chunks keep their character offset into the document text, so a search hit can tell the
model exactly where to `read` from. Each chunk is embedded with its document's title in
front: a table chunk alone rarely names the company or the period it belongs to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, Field

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# Paragraphs shorter than this (headings, captions) travel with the paragraph that follows.
SHORT_PARAGRAPH = 120


class ChunkingConfig(BaseModel, frozen=True):
    """How documents are cut; stored in the index manifest so a mismatch is detected."""

    max_chars: int = Field(default=900, ge=100)
    overlap_chars: int = Field(default=200, ge=0)


@dataclass(frozen=True, slots=True)
class Chunk:
    path: str
    offset: int  # character offset of `text` in the document's text
    text: str
    title: str

    def embedding_text(self) -> str:
        return f"{self.title}\n{self.text}"


def _paragraphs(text: str) -> list[tuple[int, str]]:
    """Paragraphs with their start offsets; blank runs separate them."""
    spans: list[tuple[int, str]] = []
    start = 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        if text[start : match.start()].strip():
            spans.append((start, text[start : match.start()]))
        start = match.end()
    if text[start:].strip():
        spans.append((start, text[start:]))
    return spans


def _with_headings(text: str, paragraphs: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join each short paragraph (a heading, a caption) to the one after it.

    Otherwise a heading followed by a long table becomes a chunk of its own that matches
    queries about the section but shows none of its content.
    """
    joined: list[tuple[int, str]] = []
    pending: int | None = None
    for offset, para in paragraphs:
        start = offset if pending is None else pending
        if len(para) < SHORT_PARAGRAPH:
            pending = start
            continue
        joined.append((start, text[start : offset + len(para)]))
        pending = None
    if pending is not None:
        last_end = paragraphs[-1][0] + len(paragraphs[-1][1])
        joined.append((pending, text[pending:last_end]))
    return joined


def _split_long(offset: int, para: str, max_chars: int) -> list[tuple[int, str]]:
    """Cut a paragraph longer than a chunk (a big table) at line ends, else hard."""
    pieces: list[tuple[int, str]] = []
    pos = 0
    while pos < len(para):
        end = min(pos + max_chars, len(para))
        if end < len(para):
            newline = para.rfind("\n", pos + 1, end)
            if newline > pos:
                end = newline + 1
        pieces.append((offset + pos, para[pos:end]))
        pos = end
    return pieces


def document_title(text: str, lines: int = 2, max_chars: int = 200) -> str:
    """The document's first lines (in a filing: the company, then the form and period)."""
    found: list[str] = []
    for line in text.splitlines():
        if line.strip():
            found.append(line.strip().lstrip("#").strip())
            if len(found) == lines:
                break
    return " - ".join(found)[:max_chars]


def chunk_document(path: str, text: str, config: ChunkingConfig) -> list[Chunk]:
    """Greedy packing of paragraphs into chunks of at most `max_chars`, with overlap.

    The next chunk starts at the earliest trailing paragraphs of the previous chunk that fit
    in `overlap_chars`, so a fact stated across a paragraph boundary lands whole in one chunk.
    """
    title = document_title(text)
    units: list[tuple[int, str]] = []
    for offset, para in _with_headings(text, _paragraphs(text)):
        units.extend(_split_long(offset, para, config.max_chars))
    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        j = i
        start = units[i][0]
        end = start
        while j < len(units) and (
            j == i or units[j][0] + len(units[j][1]) - start <= config.max_chars
        ):
            end = units[j][0] + len(units[j][1])
            j += 1
        chunks.append(Chunk(path=path, offset=start, text=text[start:end], title=title))
        if j >= len(units):
            break
        # Step back over trailing units that fit in the overlap, but always make progress.
        k = j
        while k - 1 > i and end - units[k - 1][0] <= config.overlap_chars:
            k -= 1
        i = k
    return chunks
