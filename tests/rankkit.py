"""What the data-parallel tests (DDP and FSDP) check of a rank's step against one process's."""

from __future__ import annotations

from typing import Any

import pytest


def assert_same_step_figures(mine: dict[str, Any], one: dict[str, Any]) -> None:
    """A rank's loss, grad norm, token count and KL equal the single process's (float tolerance):
    every rank reports the whole step's figures, not its share's."""
    assert mine["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-7)
    assert mine["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    assert mine["tokens"] == one["tokens"]
    if one["kl_to_ref"] is None:
        assert mine["kl_to_ref"] is None
    else:
        assert mine["kl_to_ref"] == pytest.approx(one["kl_to_ref"], rel=1e-5)
