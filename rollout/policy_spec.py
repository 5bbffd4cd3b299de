"""Which policy to play, and the one function that builds it.

Every command that plays episodes (`toolgym rollout`, `prior-check`, both sides of `eval`, the
trainer) describes its policy as a `PolicySpec` and gets it from `open_policy`, so options such
as the device or the request timeout mean the same everywhere. As text (`eval --base/--tuned`):

    MODEL_DIR                    a local transformers model (in-process)
    MODEL_DIR+ADAPTER_DIR        that model with a LoRA adapter (e.g. runs/x/adapters/v0020)
    NAME@URL[,URL...]            a model or adapter NAME served at URL(s) (vLLM, OpenAI-compatible)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rollout.errors import RolloutConfigError
from rollout.openai_policy import OpenAIPolicy, normalise_base_url
from rollout.policy import DEFAULT_DEVICE, DEFAULT_REQUEST_TIMEOUT_S, Policy

SPELLINGS = "MODEL_DIR, MODEL_DIR+ADAPTER_DIR, or NAME@http://host:port/v1[,URL...]"


@dataclass(frozen=True)
class LocalSpec:
    """A transformers model loaded into this process, optionally with a PEFT adapter."""

    model_dir: Path
    adapter: Path | None = None
    device: str = DEFAULT_DEVICE


@dataclass(frozen=True)
class ServerSpec:
    """A model or adapter `name` served by one or more OpenAI-compatible servers."""

    name: str
    urls: tuple[str, ...]
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    # Where the servers read the adapters this process publishes (a shared or mounted
    # directory); None: the same path as here.
    adapter_dir_on_server: Path | None = None


PolicySpec = LocalSpec | ServerSpec


def parse_policy(
    text: str,
    *,
    device: str = DEFAULT_DEVICE,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> PolicySpec:
    """Read one of the spellings above; `device` applies to a local model, the timeout to a
    served one. A bad spelling raises a one-line `RolloutConfigError`."""
    name, at, rest = text.partition("@")
    if at and "://" in rest:  # a model directory may contain "@", a URL list always has "://"
        return _parse_server(text, name, rest, request_timeout_s)
    return _parse_local(text, device)


def _parse_server(text: str, name: str, rest: str, timeout_s: float) -> ServerSpec:
    if not name.strip():
        raise RolloutConfigError(f"policy {text!r}: the model NAME before '@' is missing")
    urls = [url for url in rest.split(",") if url.strip()]
    try:
        normalised = tuple(normalise_base_url(url) for url in urls)
    except RolloutConfigError as exc:
        raise RolloutConfigError(f"policy {text!r}: {exc}") from None
    return ServerSpec(name.strip(), normalised, timeout_s)


def _parse_local(text: str, device: str) -> LocalSpec:
    model, _, adapter = text.partition("+")
    if not Path(model).is_dir():
        raise RolloutConfigError(
            f"policy {text!r}: {model} is not a model directory; use {SPELLINGS}"
        )
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise RolloutConfigError(f"policy {text!r}: {adapter} is not a PEFT adapter directory")
    return LocalSpec(Path(model), Path(adapter) if adapter else None, device)


def open_policy(spec: PolicySpec) -> Policy:
    """Build the policy a spec describes (the local backend is imported only when used: it
    pulls in torch and transformers)."""
    if isinstance(spec, LocalSpec):
        from rollout.local_policy import LocalPolicy

        return LocalPolicy.from_pretrained(
            spec.model_dir, device=spec.device, adapter_path=spec.adapter
        )
    return OpenAIPolicy(
        list(spec.urls),
        spec.name,
        timeout_s=spec.request_timeout_s,
        adapter_dir_on_server=spec.adapter_dir_on_server,
    )
