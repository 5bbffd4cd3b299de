"""Argument types for the `toolgym` verbs: numbers with their range checked while parsing.

`add_argument("--group-size", type=positive_int)` turns `--group-size 0` into the one-line
usage error "argument --group-size: expected a whole number >= 1, got '0'" instead of a
validation traceback, or a silent fallback, once the run is under way. They live in `envs`
because every package with verbs (envs, rollout, trainer) depends on it.
"""

from __future__ import annotations

import argparse
import math


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1  # not a whole number: reported like one out of range
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
    return value


def _real(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """1, 2, ...: counts of rows, attempts, tokens, workers."""
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    """0, 1, ...: budgets where 0 means none (failures tolerated)."""
    return _whole(text, 0)


def positive_float(text: str) -> float:
    """> 0: timeouts in seconds."""
    value = _real(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """>= 0: sampling temperature (0 is greedy)."""
    value = _real(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """0 to 1 inclusive: thresholds on a reward, blend weights."""
    value = _real(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """Above 0, up to 1: top-p, the share of GPU memory to use."""
    value = _real(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number above 0 and up to 1, got {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port to listen on, 1-65535."""
    return _port(text, 1, "a port from 1 to 65535")


def port_or_free(text: str) -> int:
    """A TCP port, or 0 for any free one."""
    return _port(text, 0, "a port from 1 to 65535, or 0 for a free one")


def _port(text: str, least: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not least <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value
