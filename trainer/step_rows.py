"""Which prompts each GRPO step plays: the step's first rows (a fresh shuffle each epoch), then
the rows its refill rounds draw from and how many each round asks for. Pure functions of the
row count, the step and the seed, so a resumed step plays what the interrupted one did."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")  # any row type: the order depends only on how many there are and the seed


def step_indices(count: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Which of `count` rows step `step` (1-based) plays first: a fresh shuffle each epoch, from
    the seed alone."""
    per_epoch = math.ceil(count / batch_size)
    epoch, offset = divmod(step - 1, per_epoch)
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[offset * batch_size : (offset + 1) * batch_size]


def rows_for_step(rows: Sequence[T], step: int, batch_size: int, seed: int) -> list[T]:
    """The prompts of step `step` (1-based), before any refill."""
    return [rows[i] for i in step_indices(len(rows), step, batch_size, seed)]


def refill_order(rows: Sequence[T], step: int, batch_size: int, seed: int) -> list[T]:
    """The prompts step `step` refills from, in the order it draws them: every row but the
    step's first ones, shuffled by (seed, step) alone. Each refill round takes the next ones, so
    no prompt is played twice in a step, and a resumed step, which finds its earlier rounds in
    its rollouts file and so the same counts, draws the same prompts."""
    first = set(step_indices(len(rows), step, batch_size, seed))
    order = [i for i in range(len(rows)) if i not in first]
    # a string seed is hashed with sha512: stable across processes, unlike hash()
    random.Random(f"refill/{seed}/{step}").shuffle(order)
    return [rows[i] for i in order]


def refill_count(missing: int, signal: int, played: int, batch_size: int) -> int:
    """Prompts to play for `missing` signal groups, given `signal` of the `played` groups so far
    carried one. Over-sampled by that share: a round costs a whole rollout's wall time, so
    asking for just the missing ones would take several rounds when most prompts carry none.
    Never more than a step's first round (and all of one when nothing had signal yet)."""
    if signal == 0:
        return batch_size
    return min(batch_size, math.ceil(missing * played / signal))
