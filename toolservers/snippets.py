"""Snippets: the line a search hit shows, and which chunk of its document shows it.

A hit's document is ranked by its best chunk, but that chunk is often not the one that
answers: a quarterly filing's narrative ("results for the first quarter of 2025 ...") shares the
question's company and period words, while the figure asked about sits in a table row of another
chunk. So a hit is shown by the chunk of its document holding the line that best matches the
query (`SnippetChunks.choose`), and the excerpt starts at that line (`snippet`). On the demo's
val questions, the ranked chunk's excerpt showed the figure asked for 47% of them; the best line
of the right document shows it for 94% (2026-12-01).

What line matching needs of a text is worked out once and cached: per chunk for the excerpt
(`chunk_lines`), per document for choosing the chunk (`SnippetChunks`). A search then only
looks up its few words.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from toolservers.chunking import Chunk

_WORD = re.compile(r"\w+")
# Chunks whose lines snippet selection keeps split into words (~9 kB each, ~37 MB in all):
# more than the synthetic corpus has (3,676); a larger corpus keeps its most recently hit ones.
SNIPPET_CACHE = 4096
DOCUMENT_CACHE = 1024  # documents, likewise (the line index only: ~1/3 of their chunks' size)

LineKey = tuple[int, float]  # (query words a line shares, their share of the line's words)
NO_MATCH: LineKey = (0, 0.0)


@dataclass(frozen=True, slots=True)
class Lines:
    """Lines of a text as matching needs them, whatever the query."""

    title: frozenset[str]  # lowercased words of the document's title
    lines_with: dict[str, tuple[int, ...]]  # lowercased word -> the lines holding it, in order
    sizes: tuple[int, ...]  # per line: how many distinct words it has


@dataclass(frozen=True, slots=True)
class ChunkLines(Lines):
    starts: tuple[int, ...]  # per line: where it starts in `flat`
    flat: str  # the chunk's text with every run of whitespace made one space


@dataclass(frozen=True, slots=True)
class DocumentLines(Lines):
    chunk_of: tuple[int, ...]  # per line: which of the document's chunks it is in


def _line_words(text: str) -> list[frozenset[str]]:
    # Digits do not count: a figure in a table row matches no query word.
    return [
        frozenset(w.lower() for w in _WORD.findall(line) if not w.isdigit())
        for line in text.splitlines(keepends=True)
    ]


def _index(lines: list[frozenset[str]]) -> dict[str, tuple[int, ...]]:
    lines_with: dict[str, list[int]] = {}
    for n, words in enumerate(lines):
        for word in words:
            lines_with.setdefault(word, []).append(n)
    return {word: tuple(numbers) for word, numbers in lines_with.items()}


def _title_words(title: str) -> frozenset[str]:
    return frozenset(w.lower() for w in _WORD.findall(title))


@functools.lru_cache(maxsize=SNIPPET_CACHE)
def chunk_lines(chunk: Chunk) -> ChunkLines:
    lines = _line_words(chunk.text)
    starts, position = [], 0
    for line in chunk.text.splitlines(keepends=True):
        # Where the line starts in `flat`: after the words of the lines before it and a space.
        before = len(" ".join(chunk.text[:position].split()))
        starts.append(before + 1 if before else 0)
        position += len(line)
    return ChunkLines(
        title=_title_words(chunk.title),
        lines_with=_index(lines),
        sizes=tuple(len(words) for words in lines),
        starts=tuple(starts),
        flat=" ".join(chunk.text.split()),
    )


def document_lines(chunks: Sequence[Chunk]) -> DocumentLines:
    """The lines of all of a document's chunks (overlapping chunks repeat a line: the first
    chunk holding it comes first)."""
    lines: list[frozenset[str]] = []
    chunk_of: list[int] = []
    for number, chunk in enumerate(chunks):
        words = _line_words(chunk.text)
        lines += words
        chunk_of += [number] * len(words)
    return DocumentLines(
        title=_title_words(chunks[0].title) if chunks else frozenset(),
        lines_with=_index(lines),
        sizes=tuple(len(words) for words in lines),
        chunk_of=tuple(chunk_of),
    )


@functools.lru_cache(maxsize=256)
def query_words(query: str) -> frozenset[str]:
    # Cached: a search matches each of its hits with the same query.
    return frozenset(w.lower() for w in _WORD.findall(query) if len(w) > 2)


def best_line(lines: Lines, words: frozenset[str]) -> tuple[LineKey, int]:
    """How well the best line matches, and its number (0 with NO_MATCH when none shares a word).

    Words of the document's title (company, form, period) are in every line's context, so
    they do not count. Between lines sharing as many, the one with fewer other words wins: a
    table row (`Operating income | 118.9 | 68.9`) over a heading or a sentence; between
    lines equal in both, the first."""
    shared: dict[int, int] = {}  # line -> query words it holds
    for word in words - lines.title:
        for line in lines.lines_with.get(word, ()):
            shared[line] = shared.get(line, 0) + 1
    best, best_key = 0, NO_MATCH
    for line in sorted(shared):
        count = shared[line]
        key = (count, count / max(lines.sizes[line], 1))
        if key > best_key:
            best, best_key = line, key
    return best_key, best


def snippet(chunk: Chunk, query: str, width: int = 240) -> str:
    """A one-line excerpt of the chunk, from the line that best matches the query.

    Starting at the best line puts a table row asked about, e.g. ``Operating income | 118.9 |
    68.9``, at the start of the excerpt: the figure is in the search result itself."""
    lines = chunk_lines(chunk)
    key, line = best_line(lines, query_words(query))
    start, flat = (lines.starts[line] if key != NO_MATCH else 0), lines.flat
    excerpt = flat[start : start + width]
    return ("..." if start > 0 else "") + excerpt + ("..." if start + width < len(flat) else "")


class SnippetChunks:
    """Which chunk of a hit's document shows it: the one holding the best-matching line."""

    def __init__(self, chunks: Sequence[Chunk], cache: int = DOCUMENT_CACHE) -> None:
        self._chunks_of: dict[str, list[Chunk]] = {}
        for chunk in chunks:
            self._chunks_of.setdefault(chunk.path, []).append(chunk)
        self._lines_of = functools.lru_cache(maxsize=cache)(self._document_lines)

    def _document_lines(self, path: str) -> DocumentLines:
        return document_lines(self._chunks_of[path])

    def choose(self, ranked: Chunk, query: str) -> Chunk:
        """`ranked` (the chunk that ranked its document), unless another chunk of the same
        document holds a line matching the query better."""
        if ranked.path not in self._chunks_of:
            return ranked
        words = query_words(query)
        own_key, _ = best_line(chunk_lines(ranked), words)
        key, line = best_line(self._lines_of(ranked.path), words)
        if key <= own_key:
            return ranked
        return self._chunks_of[ranked.path][self._lines_of(ranked.path).chunk_of[line]]
