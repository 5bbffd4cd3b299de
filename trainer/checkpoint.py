"""Checkpoint and resume: the last completed step, its adapter, optimizer and schedule.

The state file is written last, by rename, so a kill at any point leaves the previous complete
checkpoint. Data order is a pure function of (seed, step), so the step number is all it takes
to continue with the same prompts. A data-parallel run records its world size: each rank's
share of a half-played step is in its own rollouts file, so it resumes with the same number,
and how they held the model (data_parallel): a ddp optimizer state is keyed by parameter index,
an fsdp one (gathered from the shards) by parameter name, so neither loads as the other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel

from trainer.errors import CheckpointError


class TrainState(BaseModel):
    step: int  # the last completed step
    version: str  # the adapter version the policy served after it
    base_model: str
    seed: int
    world_size: int = 1  # ranks that trained it (trainer.distributed); older checkpoints: 1
    data_parallel: Literal["ddp", "fsdp"] = "ddp"  # the config's; older checkpoints: ddp


def checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoint"


def save_checkpoint(
    output_dir: Path,
    state: TrainState,
    optimizer: Any,
    scheduler: Any,
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """`optimizer_state`: the optimizer's state as gathered from its shards (fsdp); else the
    optimizer's own."""
    directory = checkpoint_dir(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    if optimizer_state is None:
        optimizer_state = optimizer.state_dict()
    torch.save(
        {"optimizer": optimizer_state, "scheduler": scheduler.state_dict()},
        directory / "optimizer.pt.partial",
    )
    os.replace(directory / "optimizer.pt.partial", directory / "optimizer.pt")
    partial = directory / "state.json.partial"
    partial.write_text(state.model_dump_json(indent=2))
    os.replace(partial, directory / "state.json")


def load_checkpoint(
    output_dir: Path, base_model: str, world_size: int = 1, data_parallel: str = "ddp"
) -> tuple[TrainState, dict[str, Any]]:
    directory = checkpoint_dir(output_dir)
    try:
        state = TrainState.model_validate(json.loads((directory / "state.json").read_text()))
        tensors = torch.load(directory / "optimizer.pt", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(
            f"nothing to resume in {output_dir}: no completed step was checkpointed there"
        ) from None
    if state.base_model != base_model:
        raise CheckpointError(
            f"the checkpoint in {output_dir} is for base model {state.base_model!r}, "
            f"not {base_model!r}: resume with the same config, or use another output_dir"
        )
    check_world_size(state, output_dir, world_size)
    check_data_parallel(state, output_dir, data_parallel)
    return state, tensors


def check_world_size(state: TrainState, output_dir: Path, world_size: int) -> None:
    if state.world_size != world_size:
        raise CheckpointError(
            f"the checkpoint in {output_dir} was trained by {state.world_size} process(es), "
            f"not {world_size}: resume with --nproc-per-node {state.world_size} "
            "(or the same launcher layout)"
        )


def check_data_parallel(state: TrainState, output_dir: Path, data_parallel: str) -> None:
    # One process trains the same either way and saves a plain optimizer state.
    if state.world_size > 1 and state.data_parallel != data_parallel:
        raise CheckpointError(
            f"the checkpoint in {output_dir} was trained with data_parallel: "
            f"{state.data_parallel}, not {data_parallel}: resume with --set "
            f"data_parallel={state.data_parallel} (its optimizer state is laid out for it)"
        )
