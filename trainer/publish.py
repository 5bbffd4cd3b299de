"""Adapters: saved atomically into versioned directories, then published to the policy.

Local policy: swapped in place. vLLM: loaded under the new version's name (the server must be
able to read the directory), rollouts routed to it, then the previous version unloaded.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rollout.policy import Policy


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


class Publisher:
    """Makes a saved adapter the policy's current version."""

    def __init__(self, policy: Policy, adapter_client: Any = None, server_dir: Path | None = None):
        self.policy = policy
        self.adapter_client = adapter_client  # rollout.vllm.AdapterClient for a vLLM policy
        self.server_dir = server_dir  # where the vLLM server sees `adapters_dir`

    async def publish(self, path: Path, version: str) -> None:
        if self.adapter_client is None:
            await self.policy.swap_adapter(path, version)  # type: ignore[attr-defined]
            return
        server_path = self.server_dir / path.name if self.server_dir else path
        await self.adapter_client.publish(str(server_path), version)
        self.policy.set_model(version)  # type: ignore[attr-defined]
