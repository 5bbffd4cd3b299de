"""Numbers as people and models write them, read into exact `Quantity` values.

Accepted: thousands separators (1,234,567 and 1 234 567), currency symbols and codes before
or after ($, US$, €, £, ¥, USD, EUR, GBP, JPY, "dollars", "euros", "pounds"), magnitude words
and suffixes (K, thousand, M, mn, MM, million, B, bn, billion, T, tn, trillion), percentages
(%, percent, per cent, pct, percentage points, pp; bps and basis points are hundredths of a
point), signs (+, -, the unicode minus, "minus", "negative"), accounting negatives
((1,234), $(1,234), ($1.2 million)), trailing words ("$842 million dollars"), "2.5x",
scientific notation (1.2345e+09).

Not numbers here: figures glued to letters (Q3, FY2025, 10q, 3rd), hyphenated labels
(10-K, COVID-19, 3-month). Years, dates (September 30, 2025-09-30), footnote markers "(2)"
and list markers "1." are kept but flagged as noise, so an answer's figure wins over them.
All arithmetic is Decimal, so "0.1 percentage point" comparisons are exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from envs.graders.text import inside, normalize_unicode


class Kind(StrEnum):
    NUMBER = "number"
    YEAR = "year"  # 1900-2100, written plainly: "in 2025"
    DATE = "date"  # "September 30", or part of 2025-09-30 or 9/30/2025
    FOOTNOTE = "footnote"  # a small number in parentheses inside prose: "(2)"
    LIST = "list"  # a list marker at the start of a line: "1." or "2)"


NOISE_KINDS = frozenset({Kind.YEAR, Kind.DATE, Kind.FOOTNOTE, Kind.LIST})

_DIGITS = (
    r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)"
    r"|\d{1,3}(?: \d{3})+(?:\.\d+)?(?!\d)"
    r"|\d+(?:\.\d+)?"
    r"|\.\d+)"
)
_NUMBER = re.compile(rf"(?<![\w.,'’]){_DIGITS}(?:[eE][-+]?\d{{1,2}}(?![\w.]))?(?!\d)")
_CURRENCY_SYMBOL = {"$": "USD", "US$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}
_PREFIX = re.compile(
    r"(?P<open>\(\s*)?"
    r"(?P<sign>[-+−–](?!\s)|\bminus\s+|\bnegative\s+)?"
    r"(?P<cur>(?:US\$|\$|€|£|¥|\b(?:USD|EUR|GBP|JPY)\b)\s?)?"
    r"(?P<open2>\(\s*)?"
    r"(?P<sign2>[-+−])?"
    r"$",
    re.IGNORECASE,
)
_MAGNITUDE = (
    r"\s?(?:thousands?|millions?|billions?|trillions?|mn|mm|mln|bn|bln|tn)"
    r"|(?:k|m|b|t)"  # glued, any case: $5m, 1.2b, 40k
    r"|\s(?-i:K|M|B|T|MM)"  # spaced single letters only in capitals: "842.5 M"
)
_SUFFIX = re.compile(
    r"(?P<close2>\))?"
    rf"(?P<mag>(?:{_MAGNITUDE})(?![a-z]))?"
    r"(?P<pct>\s?(?:\\?%|percent(?:age\s+points?)?|per\s+cent|pct|percentage\s+points?"
    r"|ppts?|pp|bps|bp|basis\s+points?)(?![a-z]))?"
    r"(?P<cur>\s?(?:USD|EUR|GBP|JPY|(?:US\s+)?dollars?|euros?|pounds?|yen|€|\$|£)(?![a-z]))?"
    r"(?P<times>(?:x|×)(?![a-z]))?"
    r"(?P<close>\s?\))?",
    re.IGNORECASE,
)
_MAGNITUDE_EXPONENT = {
    "thousand": 3, "thousands": 3, "k": 3,
    "million": 6, "millions": 6, "m": 6, "mn": 6, "mm": 6, "mln": 6,
    "billion": 9, "billions": 9, "b": 9, "bn": 9, "bln": 9,
    "trillion": 12, "trillions": 12, "t": 12, "tn": 12,
}  # fmt: skip
_CURRENCY_WORD = {"dollar": "USD", "euro": "EUR", "pound": "GBP", "yen": "JPY"}
# A count of shares, not an amount of money: "336.3 million shares" (not "per share").
_COUNT_NOUN = re.compile(r"\s+(?:of\s+)?(?:common\s+)?shares?\b", re.IGNORECASE)
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_MONTH_BEFORE = re.compile(rf"\b{_MONTH}\.?\s+$", re.IGNORECASE)
_MONTH_AFTER = re.compile(rf"\s+{_MONTH}\b", re.IGNORECASE)
# "decreased by 3.2%", "a loss of $5 million", "down 4%": the change is negative in words.
_DECREASE_WORDS = re.compile(
    r"\b(?:decreas\w*|declin\w*|fell|falls?|fallen|dropp?\w*|reduc\w*|shr[au]nk|lost"
    r"|loss(?:es)?|lower(?:ed)?|down)\s+(?:(?:by|of|was|were|is|totall?ed)\s+)?$",
    re.IGNORECASE,
)
_DECREASE_AFTER = re.compile(
    r"\s+(?:decrease|decline|drop|fall|reduction|lower|loss|less)\b", re.IGNORECASE
)
# Dates written with digits only: 2025-09-30, 9/30/2025, 30.09.2025.
_NUMERIC_DATE = re.compile(
    r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b|\b\d{1,2}\.\d{1,2}\.\d{4}\b"
)
_GLUED_CODE = re.compile(r"\b(USD|EUR|GBP|JPY)(?=\d)", re.IGNORECASE)
# Accounting parentheses count as a minus when the group stands alone on its line.
_LINE_END = re.compile(r"[\s.*_]*(?:\n|$)")
_STANDALONE = re.compile(r"(?:^|[:=]|\b(?:is|was|be))[\s*_]*$", re.IGNORECASE)


@dataclass(frozen=True)
class Quantity:
    """One number as written. Percentages hold percentage points (13.4% -> 13.4)."""

    mantissa: Decimal  # signed, as written: "$842.5 million" -> 842.5
    exponent: int  # power of ten from a magnitude word: million -> 6; bps -> -2
    decimals: int  # digits shown after the decimal point
    sig_digits: int  # significant digits shown
    percent: bool
    explicit_scale: bool  # a magnitude word or suffix was written
    currency: str | None  # ISO code
    text: str
    start: int
    end: int
    kind: Kind = Kind.NUMBER
    decrease_worded: bool = False  # preceded by "decreased by", "down", "a loss of" ...
    counts: str | None = None  # what the figure counts, when a noun says so: "shares"

    @property
    def value(self) -> Decimal:
        return self.mantissa.scaleb(self.exponent)

    @property
    def unit(self) -> Decimal:
        """One unit in the last shown digit, in the same unit as `value`."""
        return Decimal(1).scaleb(self.exponent - self.decimals)

    @property
    def has_unit(self) -> bool:
        """Written with a percent sign, a magnitude word or a currency."""
        return self.percent or self.explicit_scale or self.currency is not None

    def negated(self) -> Quantity:
        return replace(self, mantissa=-self.mantissa)


def prepare(text: str) -> str:
    """The form `find_quantities` reads: NFKC, and "USD842" spaced as "USD 842"."""
    return _GLUED_CODE.sub(r"\1 ", normalize_unicode(text))


def find_quantities(text: str) -> list[Quantity]:
    """Every number in `text` (already `prepare`d), in order, noise flagged by `kind`."""
    dates = [m.span() for m in _NUMERIC_DATE.finditer(text)]
    found = []
    for match in _NUMBER.finditer(text):
        quantity = _read_mention(text, match)
        if quantity is not None and inside(dates, quantity.start):
            quantity = replace(quantity, kind=Kind.DATE)
        if quantity is not None:
            found.append(quantity)
    return found


def quantities_in(text: str) -> list[Quantity]:
    """`find_quantities` on raw text."""
    return find_quantities(prepare(text))


_SYMBOL_SIGNS = frozenset("-+−–")
_MINUS = frozenset({"-", "−", "–", "minus", "negative"})
_CURRENCY_CODES = frozenset({"USD", "EUR", "GBP", "JPY"})


def _read_mention(text: str, match: re.Match[str]) -> Quantity | None:
    start, end = match.span()
    prefix = _PREFIX.search(text, max(0, start - 16), start)
    suffix = _SUFFIX.match(text, end, min(len(text), end + 48))
    assert prefix is not None and suffix is not None  # every group is optional
    sign = (prefix.group("sign") or prefix.group("sign2") or "").strip().lower()
    prefix_start = prefix.start()
    before = text[prefix_start - 1] if prefix_start > 0 else ""
    if prefix.group("sign") and sign in _SYMBOL_SIGNS and before.isalnum():
        if before.isalpha():
            return None  # a hyphenated label: COVID-19, henderson-10q
        sign, prefix_start = "", prefix.end("sign")  # the end of a range: 5-7
    tail = text[suffix.end() : suffix.end() + 2]
    if re.match(r"[-–][A-Za-z]", tail) or (not suffix.group(0) and re.match(r"[A-Za-z]", tail)):
        return None  # 10-K, 3-month, 3rd, 10q
    return _build(text, match, prefix, suffix, sign, prefix_start)


def _build(
    text: str,
    match: re.Match[str],
    prefix: re.Match[str],
    suffix: re.Match[str],
    sign: str,
    start: int,
) -> Quantity:
    digits = match.group(0)
    plain, _, power = digits.replace(",", "").replace(" ", "").lower().partition("e")
    decimals = len(plain.partition(".")[2])
    mag = (suffix.group("mag") or "").strip().lower()
    pct = (suffix.group("pct") or "").strip().lower()
    exponent = (_MAGNITUDE_EXPONENT[mag] if mag else 0) + int(power or 0)  # 1.2e9
    if pct.startswith(("bp", "basis")):
        exponent -= 2  # basis points are hundredths of a percentage point
    currency = _currency(prefix.group("cur"), suffix.group("cur"))
    paren, start, end = _parentheses(text, match, prefix, suffix, start, bool(currency))
    negative = sign in _MINUS or paren == "negative"
    footnote = paren == "aside" and decimals == 0 and len(plain) <= 2 and not (mag or pct)
    mantissa = Decimal(plain)
    quantity = Quantity(
        mantissa=-mantissa if negative else mantissa,
        exponent=exponent,
        decimals=decimals,
        sig_digits=max(1, len(plain.replace(".", "").lstrip("0"))),
        percent=bool(pct),
        explicit_scale=bool(mag or power),
        currency=currency,
        text=text[start:end].strip(),
        start=start,
        end=end,
        decrease_worded=bool(
            _DECREASE_WORDS.search(text, max(0, start - 40), start)
            or _DECREASE_AFTER.match(text, end)
        ),
        counts=_counted(text, end),
    )
    kind = Kind.FOOTNOTE if footnote else _noise_kind(text, quantity, match, bool(sign))
    return replace(quantity, kind=kind)


def _parentheses(
    text: str,
    match: re.Match[str],
    prefix: re.Match[str],
    suffix: re.Match[str],
    start: int,
    currency: bool,
) -> tuple[str, int, int]:
    """How parentheses around a figure read ("negative", "aside" or ""), and its span.

    Accounting negatives: (1,234), $(1,234), ($1.2 million), or a parenthesised figure alone
    as the whole line's value ("Net change: (5.2)"). In prose "(13.4%)" is an aside, and
    "(2)" is a footnote or list marker.
    """
    end = suffix.end() if suffix.group(0).strip() else match.end()
    opened = bool(prefix.group("open") or prefix.group("open2"))
    closed = bool(suffix.group("close") or suffix.group("close2"))
    if opened and closed:
        alone = _STANDALONE.search(_line_before(text, start)) and _LINE_END.match(text, end)
        if currency or "," in match.group(0) or alone:
            return "negative", start, end
        if prefix.group("open"):  # the span without the aside's parentheses
            close = "close" if suffix.group("close") else "close2"
            return "aside", prefix.end("open"), suffix.start(close)
        return "aside", start, end
    if suffix.group("close"):  # "(about $1.2 billion)": the paren closes an aside
        end = suffix.start("close")
    return "", start, end


def _counted(text: str, end: int) -> str | None:
    """The noun right after a figure that says what it counts ("336.3 million shares")."""
    found = _COUNT_NOUN.match(text, end)
    return "shares" if found else None


def _currency(before: str | None, after: str | None) -> str | None:
    for raw in (before, after):
        token = (raw or "").strip()
        if token in _CURRENCY_SYMBOL:
            return _CURRENCY_SYMBOL[token]
        if token.upper() in _CURRENCY_CODES:
            return token.upper()
        word = token.lower().removeprefix("us").strip().rstrip("s")
        if word in _CURRENCY_WORD:
            return _CURRENCY_WORD[word]
    return None


def _noise_kind(text: str, q: Quantity, match: re.Match[str], signed: bool) -> Kind:
    """Years, month days and list markers: numbers that are rarely the answer."""
    digits = match.group(0)
    if q.decimals or q.has_unit or signed or not digits.isdigit():
        return Kind.NUMBER
    if len(digits) == 4 and 1900 <= int(digits) <= 2100:
        return Kind.YEAR
    if (
        len(digits) <= 2
        and 1 <= int(digits) <= 31
        and (
            _MONTH_BEFORE.search(text, max(0, q.start - 12), q.start)
            or _MONTH_AFTER.match(text, q.end, q.end + 16)
        )
    ):
        return Kind.DATE
    if (
        len(digits) <= 2
        and re.fullmatch(r"\s*(?:[-*•]\s*)?", _line_before(text, q.start))
        and re.match(r"[.)]\s", text[match.end() : match.end() + 2])
    ):
        return Kind.LIST
    return Kind.NUMBER


def _line_before(text: str, position: int, limit: int = 120) -> str:
    """The text from the line's start to `position`, at most `limit` characters of it."""
    window_start = max(0, position - limit)
    return text[text.rfind("\n", window_start, position) + 1 or window_start : position]
