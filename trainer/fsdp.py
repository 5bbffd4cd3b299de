"""`data_parallel: fsdp`: the base model sharded over the ranks (torch's FSDP2), for a base that
does not fit on one device.

    every decoder layer, then the root: fully_shard -> each rank holds 1/world of every weight
    forward / backward: each layer's weights all-gathered, used, freed again
    backward: the LoRA gradients reduce-scattered (averaged, as DDP's all-reduce)
    optimizer: over the sharded LoRA weights (DTensors), so its state is sharded too
    saving: the LoRA weights (and optimizer state) gathered in full on rank 0

The frozen base keeps the dtype it was loaded in and the LoRA weights theirs (PEFT keeps them
in float32); FSDP2 all-gathers each dtype as it is. Every forward is a collective, so every
rank must run as many as the others: the update pads a rank's micro-batches with zero-share
stand-ins to the step's largest count. A sharded model cannot generate (`generate` runs outside
the root's forward, on shards), so the rollouts come from servers (`policy.backend: vllm`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from trainer.distributed import DistContext


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def layer_classes(model: Any) -> set[str]:
    """The class names of the model's repeated blocks (transformers' `_no_split_modules`:
    the decoder layers); empty for a model that names none."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(getattr(inner, "_no_split_modules", None) or ())


def shard_model(model: Any, ctx: DistContext, device: str) -> Any:
    """Shard `model` in place over the ranks: each decoder layer is its own unit (its weights
    are gathered only while it runs), the root holds the rest (embeddings, head, norm).
    Parameters on the CPU move to `device` shard by shard (fully_shard moves each unit it
    wraps), so a model loaded on the CPU never needs a whole replica on the device."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (ctx.world_size,))
    names = layer_classes(model)
    # a list first: fully_shard changes the classes of the modules it wraps
    layers = [m for m in model.modules() if type(m).__name__ in names]
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


class Sharded(torch.nn.Module):
    """The sharded model with DDP's interface as the update uses it: `module` and `no_sync()`,
    so trainer.update runs DDP and FSDP alike."""

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate this micro-batch's gradient unreduced; the last backward reduces the sum
        once (as DDP's no_sync: fewer collectives, the same gradient)."""
        self.module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.module.set_requires_gradient_sync(True)


def full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # the trainable (LoRA) part only, whole, on rank 0's CPU: never the frozen base
    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def gathered_adapter(model: Any, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The full LoRA weights by the model's own names, on rank 0's CPU (empty on the others).
    A collective: every rank calls it. Gathered weight by weight rather than through
    get_model_state_dict, which also gathers a frozen weight tied to a trainable name (the
    embeddings under lm_head: a vocabulary-sized tensor for nothing)."""
    from torch.distributed.tensor import DTensor

    state = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            full = param.full_tensor() if isinstance(param, DTensor) else param
            if ctx.is_main:
                state[name] = full.detach().cpu()
    return state


def gathered_optimizer(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter name, on rank 0 (empty on the others).
    A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=full_options())


def load_optimizer(model: Any, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Restore a gathered optimizer state: every rank read the whole file, and keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, ignore_frozen_params=True)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=dict(state), options=options)
