"""Adapters: saved atomically into versioned directories, then published to the policy.

Publishing is the policy's own `publish_adapter` (rollout.policy.Policy): a local policy swaps
the adapter in place; a vLLM policy loads it under the new version's name on its servers (they
must be able to read the directory), routes rollouts to it, then unloads the previous version.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def version_name(step: int) -> str:
    return f"v{step:04d}"


def save_adapter(model: Any, adapters_dir: Path, version: str) -> Path:
    """Write to a temporary directory and rename: a reader never sees half an adapter."""
    final = adapters_dir / version
    partial = adapters_dir / f".{version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final
