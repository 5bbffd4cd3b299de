"""Generate through a LoRA adapter at the base model's speed: fold it into the weights.

Routed the ordinary way, every LoRA-wrapped linear layer runs its base matmul plus the adapter's
two small ones, a scale and an add: on a CPU with a small model, many small operations per token
(the demo's eval, in the same minutes: the tuned side played 15 episodes/s against the base's
23; folded, 18 against 21). Folded, the layer's weight is `W + scale * B @ A` and one matmul does
it all, the same function up to float rounding.

Folding uses PEFT's own merge (so every LoRA variant PEFT can merge is handled its way); undoing
it copies back the base weights saved at the first fold instead of PEFT's subtraction, so the base
is restored bit for bit however many adapters come and go. Only float32 weights are folded: added
into bf16 or fp16 weights, a small adapter delta is largely rounded away, so those models keep the
unfolded route (as does anything PEFT cannot merge). A weight that another module shares (an
`lm_head` tied to the input embeddings) is never folded: the adapter would leak into the
embeddings. Its layer stays routed while the rest fold (PEFT decides per layer).
"""

from __future__ import annotations

from typing import Any

import torch

# PEFT's warning for a LoRA on an lm_head tied to the embeddings. Such an adapter changes what
# the model writes and not what it reads, as intended; the "complications" it warns of are in
# merging, and AdapterFolding never folds into a shared weight.
TIED_HEAD_WARNING = r"Model has `tie_word_embeddings=True` and a tied layer is part of the adapter"


def lora_layers(model: Any) -> list[Any]:
    """The model's LoRA-wrapped layers (none until an adapter is loaded)."""
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


class AdapterFolding:
    """Which adapter is folded into `model`'s base weights, and the base weights it replaced."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.folded: str | None = None
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}  # id(layer) ->
        self._merged: list[Any] = []  # the layers holding `folded`

    def select(self, name: str) -> None:
        """Route the next forward passes through adapter `name`, folded in where it can be
        (else through PEFT's own adapter path)."""
        if self.folded == name:
            return  # folded in and enabled by an earlier call
        self.unfold()  # before set_adapter, which would unmerge by subtraction
        self.model.enable_adapters()
        self.model.set_adapter(name)
        layers = [layer for layer in lora_layers(self.model) if name in layer.lora_A]
        if not layers or not all(_float32(layer) for layer in layers):
            return
        shared = _shared_storage(self.model)
        layers = [layer for layer in layers if _weight_ptr(layer) not in shared]
        for layer in layers:
            base = layer.get_base_layer()
            if id(layer) not in self._saved:
                bias = base.bias.detach().clone() if base.bias is not None else None
                self._saved[id(layer)] = (base.weight.detach().clone(), bias)
            layer.merge(adapter_names=[name])
        self.folded, self._merged = name, layers

    def unfold(self) -> None:
        """Put the base weights back exactly as they were before any fold."""
        with torch.no_grad():
            for layer in self._merged:
                weight, bias = self._saved[id(layer)]
                base = layer.get_base_layer()
                base.weight.copy_(weight)
                if bias is not None:
                    base.bias.copy_(bias)
                layer.merged_adapters.clear()
        self.folded, self._merged = None, []


def _float32(layer: Any) -> bool:
    weight = getattr(layer.get_base_layer(), "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dtype == torch.float32


def _weight_ptr(layer: Any) -> int:
    return int(layer.get_base_layer().weight.data_ptr())


def _shared_storage(model: Any) -> set[int]:
    """Data pointers held by more than one parameter name: tied weights."""
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[param.data_ptr()] = seen.get(param.data_ptr(), 0) + 1
    return {ptr for ptr, count in seen.items() if count > 1}
