"""The string grader: normalised exact match, and span-set F1 for multi-span references.

Normalisation (both sides): NFKC, accents dropped (é -> e), case folded, punctuation dropped
("U.S." -> "us", "long-term" -> "long term"), thousands separators dropped ("1,234" ->
"1234"), articles (a, an, the) dropped, "&" read as "and", white space collapsed. "%" and
currency symbols are kept: they change what a figure means.

The graded text is what follows the last answer label ("Answer: ...", "Final answer:"), else
the last "the answer is ...", else the whole answer.
- One reference span: 1.0 when the normalised answer equals it, else 0.0. Exact on purpose:
  "Retail and Wholesale" is not "Retail".
- Several spans: the answer's spans are the reference spans it contains, plus whatever is
  left between separators (commas, semicolons, line breaks, bullets, "and", "or", "&"). The
  score is the F1 of that set against the reference set: 2|A∩R| / (|A| + |R|). Equal sets
  score 1.0 (correct) whatever the order; a missing or an extra span costs precision or
  recall (partial). Leftover words count as an extra span, so answer with the spans only.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from envs.graders.base import GradeResult, Reference, SyncGrader, Verdict, verdict_for
from envs.graders.text import answer_regions, normalize_unicode, strip_reasoning

SEP = "\x00"  # a separator token: never produced by normalised text
_TOKEN = re.compile(
    r"(?P<num>\d+(?:,\d{3})*(?:\.\d+)?(?![^\W_]))"
    r"|(?P<word>[^\W_]+(?:['.][^\W_]+)*)"
    r"|(?P<sym>[%$€£¥&])"
    r"|(?P<sep>[,;|\n•])"
)
_ARTICLES = frozenset({"a", "an", "the"})
_CONJUNCTIONS = frozenset({"and", "or"})


def tokens(text: str) -> list[str]:
    """Normalised tokens of `text`; SEP marks a separator (comma, semicolon, line break)."""
    text = unicodedata.normalize("NFKD", normalize_unicode(text).replace("’", "'"))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    out = []
    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group(0)
        if kind == "sep":
            out.append(SEP)
        elif kind == "num":
            out.append(value.replace(",", ""))
        elif kind == "word" and value not in _ARTICLES:
            out.append(value.replace("'", "").replace(".", ""))
        elif kind == "sym":
            out.append("and" if value == "&" else value)
    return out


def normalize_answer(text: str) -> str:
    """The comparable form of a short answer (see the module doc)."""
    return " ".join(t for t in tokens(text) if t != SEP)


def answer_segment(answer: str) -> str:
    """The part of an answer that is graded: after the last answer marker, if any."""
    text = strip_reasoning(normalize_unicode(answer))
    regions = answer_regions(text)
    for start, end in regions:
        if normalize_answer(text[start:end]):
            return text[start:end]
    return "" if regions else text  # "Answer:" and nothing after it


def answer_spans(answer: str, reference_spans: Sequence[str]) -> set[str]:
    """The answer's spans: the reference spans it contains, plus the leftover pieces."""
    words = tokens(answer)
    covered = [False] * len(words)
    found: set[str] = set()
    for span in sorted({tuple(tokens(s)) for s in reference_spans}, key=len, reverse=True):
        if _cover(words, covered, list(span)):
            found.add(_joined(span))
    piece: list[str] = []
    for word, taken in [*zip(words, covered, strict=True), (SEP, True)]:
        if taken or word == SEP or word in _CONJUNCTIONS:
            if piece:
                found.add(" ".join(piece))
            piece = []
        else:
            piece.append(word)
    return found


def span_f1(predicted: set[str], gold: set[str]) -> float:
    """F1 of two span sets: 2|P∩G| / (|P| + |G|); 1.0 for two empty sets."""
    if not predicted and not gold:
        return 1.0
    return 2 * len(predicted & gold) / (len(predicted) + len(gold))


def _joined(span: Sequence[str]) -> str:
    return " ".join(t for t in span if t != SEP)


def _cover(words: list[str], covered: list[bool], span: list[str]) -> bool:
    """Mark every free occurrence of `span` in `words`; True when there was one."""
    hit, n = False, len(span)
    if n == 0:
        return False
    for i in range(len(words) - n + 1):
        if words[i : i + n] == span and not any(covered[i : i + n]):
            covered[i : i + n] = [True] * n
            hit = True
    return hit


class StringGrader(SyncGrader):
    name = "string"

    def grade(self, answer: str, reference: Reference) -> GradeResult:
        segment = answer_segment(answer)
        if not normalize_answer(segment):
            return GradeResult(score=0.0, verdict=Verdict.NO_ANSWER, details={})
        if len(reference.spans) == 1:
            return _exact(segment, reference.spans[0])
        gold = {_joined(tokens(s)) for s in reference.spans}
        predicted = answer_spans(segment, reference.spans)
        score = span_f1(predicted, gold)
        details: dict[str, Any] = {
            "answer_spans": sorted(predicted),
            "reference_spans": sorted(gold),
            "matched": sorted(predicted & gold),
            "f1": score,
        }
        return GradeResult(score=score, verdict=verdict_for(score), details=details)


def _exact(segment: str, reference: str) -> GradeResult:
    got, want = normalize_answer(segment), normalize_answer(reference)
    score = 1.0 if got == want else 0.0
    details = {"answer_normalized": got, "reference_normalized": want}
    return GradeResult(score=score, verdict=verdict_for(score), details=details)
