"""Machine-readable recipe of a synthetic task, and the one function that computes its answer.

A row's ``metadata["recipe"]`` names the stated figures (document, metric, period) and the
operation. The builder feeds the figures from facts.jsonl, the oracle feeds the same figures
read from the documents' text; both call `compute`, so they cannot drift apart.
Arithmetic is in Decimal with half-up rounding, so the result does not depend on binary floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Answer", "FactRef", "Recipe", "RecipeError", "compute", "format_amount"]

Op = Literal["lookup", "ratio", "growth", "sum", "difference", "argmax", "argmin"]
AnswerFormat = Literal[
    "usd_millions", "percent", "usd_per_share", "shares_millions", "times", "points", "company"
]


class RecipeError(ValueError):
    """A recipe that cannot be computed (division by zero, a tie, wrong arity)."""


class FactRef(BaseModel):
    """A figure stated in a document: which document, which metric, which period column."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    company: str
    metric: str
    period: str


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: Op
    facts: list[FactRef] = Field(min_length=1)
    answer_format: AnswerFormat
    decimals: int = Field(ge=0, le=6)


@dataclass(frozen=True)
class Answer:
    text: str  # the reference answer string
    exact: Decimal | None = None  # before rounding; None for a company-name answer
    rounded: Decimal | None = None  # the number the text shows


_ARITY = {"lookup": 1, "ratio": 2, "growth": 2, "difference": 2}


def _round(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def format_amount(value: Decimal, fmt: AnswerFormat, decimals: int) -> str:
    """The answer string for a number: ``$1,843.3 million``, ``20.9%``, ``-$0.06``, ``2.5 ...``."""
    v = _round(value, decimals)
    if v == 0:
        v = abs(v)  # never print "-0.0"
    sign, mag = ("-" if v < 0 else ""), abs(v)
    grouped = f"{mag:,.{decimals}f}"
    if fmt == "usd_millions":
        return f"{sign}${grouped} million"
    if fmt == "usd_per_share":
        return f"{sign}${grouped}"
    if fmt == "shares_millions":
        return f"{sign}{grouped} million shares"
    if fmt == "percent":
        return f"{sign}{grouped}%"
    if fmt == "points":
        return f"{sign}{grouped} percentage points"
    if fmt == "times":
        return f"{sign}{grouped}"
    raise RecipeError(f"format {fmt!r} is not numeric")


def _number(recipe: Recipe, values: Sequence[Decimal]) -> Decimal:
    op = recipe.op
    if op == "sum":
        return sum(values, Decimal(0))
    a, b = (values[0], values[1]) if len(values) > 1 else (values[0], Decimal(0))
    if op == "lookup":
        return a
    if op == "difference":
        return a - b
    if b == 0:
        raise RecipeError(f"{op} divides by a zero figure")
    if op == "growth":
        return (a - b) / b * 100
    scale = 100 if recipe.answer_format == "percent" else 1
    return a / b * scale  # ratio


def compute(recipe: Recipe, values: Sequence[Decimal]) -> Answer:
    """The reference answer from the stated figures, in the order of ``recipe.facts``."""
    if len(values) != len(recipe.facts):
        raise RecipeError(f"{len(recipe.facts)} figures named, {len(values)} given")
    want = _ARITY.get(recipe.op)
    if want is not None and len(values) != want:
        raise RecipeError(f"{recipe.op} takes {want} figure(s), got {len(values)}")
    if recipe.op in ("argmax", "argmin"):
        best = max(values) if recipe.op == "argmax" else min(values)
        winners = [f.company for f, v in zip(recipe.facts, values, strict=True) if v == best]
        if len(winners) != 1:
            raise RecipeError(f"{recipe.op} is a tie between {', '.join(winners)}")
        return Answer(winners[0])
    exact = _number(recipe, values)
    text = format_amount(exact, recipe.answer_format, recipe.decimals)
    return Answer(text, exact, _round(exact, recipe.decimals))
