"""Text helpers shared by the graders: reasoning blocks, answer markers, bold, sentences."""

from __future__ import annotations

import bisect
import math
import re
import unicodedata

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)

# Strong markers label the answer: "Answer:", "**Final answer**:", "answer =", \boxed{...}.
# "to answer this, I searched ..." is no marker: the label needs its punctuation.
_STRONG_MARKER = re.compile(
    r"\bfinal\s+answer\b[\s*_]*(?:is\b|was\b|[:=]|[-–—](?=\s))?[\s*_:]*"
    r"|\banswer\b[\s*_]*(?:[:=]|[-–—](?=\s))[\s*_:]*"
    r"|\\boxed\{",
    re.IGNORECASE,
)
# Weak markers are phrases: "the answer is ...". "I hope this answer is helpful" is one too,
# so graders of figures only count a weak marker followed at once by a figure.
_WEAK_MARKER = re.compile(r"\banswer\s+(?:is|was|would\s+be|will\s+be)\b[\s*_:]*", re.IGNORECASE)
_FIGURE_FOLLOWS = re.compile(
    r"(?:(?:approximately|about|roughly|around|nearly|some|~|≈)\s*)?"
    r"[-+−(]?\s?(?:US\$|\$|€|£|¥|USD|EUR|GBP|JPY)?\s?\(?[-−]?\.?\d",
    re.IGNORECASE,
)
# An equation's result: the figure after the last "=" (or "≈") of the concluding sentence.
_EQUALS = re.compile(r"[=≈]")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)\*\*|__(?=\S)(.+?)__")
# A sentence ends at . ! ? followed by white space, or at a line break. A decimal point is
# followed by a digit, so "$1,234.5 million" stays one sentence.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_WORD_BEFORE = re.compile(r"\w+(?:\.\w+)*$")
_ABBREVIATIONS = frozenset(
    {"i.e", "e.g", "vs", "approx", "ca", "cf", "etc", "inc", "corp", "co", "ltd", "no", "u.s"}
)


def normalize_unicode(text: str) -> str:
    """NFKC: full-width digits, no-break and thin spaces, ligatures become plain characters."""
    return unicodedata.normalize("NFKC", text)


def strip_reasoning(text: str) -> str:
    """Drop <think> blocks: a reasoning model's scratch work is not its answer."""
    lowered = text.lower()
    if _THINK_CLOSE in lowered and _THINK_OPEN not in lowered:
        # Some chat templates open the block in the prompt, so only the close tag appears.
        return text[lowered.rindex(_THINK_CLOSE) + len(_THINK_CLOSE) :]
    text = _THINK_BLOCK.sub(" ", text)
    lowered = text.lower()
    if _THINK_OPEN in lowered:  # never closed: everything after it is unfinished thinking
        text = text[: lowered.index(_THINK_OPEN)]
    return text


def answer_regions(text: str, figure_follows: bool = False) -> list[tuple[int, int]]:
    """Where marked answers lie, best first: after strong markers (last one first), then
    after weak ones. With `figure_follows`, a weak marker counts only when a figure comes
    right after it. For \\boxed{...} the region ends at the closing brace."""
    regions = []
    for marker in reversed(list(_STRONG_MARKER.finditer(text))):
        start = marker.end()
        end = len(text)
        if marker.group(0).startswith("\\boxed"):
            close = text.find("}", start)
            end = close if close >= 0 else end
        regions.append((start, end))
    for marker in reversed(list(_WEAK_MARKER.finditer(text))):
        if not figure_follows or _FIGURE_FOLLOWS.match(text, marker.end()):
            regions.append((marker.end(), len(text)))
    return regions


def equation_result_start(text: str, start: int, end: int) -> int | None:
    """Where the right-hand side of the last "=" between `start` and `end` begins."""
    found = None
    for match in _EQUALS.finditer(text, start, end):
        found = match.end()
    return found


def bold_regions(text: str) -> list[tuple[int, int]]:
    """Spans of markdown bold (**x** or __x__), inner text only."""
    regions = []
    for match in _BOLD.finditer(text):
        group = 1 if match.group(1) is not None else 2
        regions.append((match.start(group), match.end(group)))
    return regions


def sentence_regions(text: str) -> list[tuple[int, int]]:
    """Spans of sentences (and lines), in order. "i.e.", "approx." and the like end none."""
    regions, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        word = _WORD_BEFORE.search(text, max(0, match.start() - 12), match.start())
        if match.group(0) == "." and word and word.group(0).lower() in _ABBREVIATIONS:
            continue
        regions.append((start, match.end()))
        start = match.end()
    if start < len(text):
        regions.append((start, len(text)))
    return regions


def inside(regions: list[tuple[int, int]], position: int) -> bool:
    """Whether `position` lies in one of `regions` (sorted, not overlapping)."""
    i = bisect.bisect_right(regions, (position, math.inf)) - 1
    return i >= 0 and regions[i][0] <= position < regions[i][1]
