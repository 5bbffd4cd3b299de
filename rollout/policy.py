"""The policy protocol: one assistant turn from a conversation, with the exact tokens.

Every backend (a vLLM/OpenAI-compatible server, a local transformers model, the fake server in
tests) answers a `TurnRequest` with a `Turn`: the assistant message in OpenAI chat format (tool
calls parsed) plus the token ids of the prompt the model was conditioned on, the token ids it
produced and their logprobs, as the backend itself reported them. Nothing downstream ever
re-tokenizes text to recover them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

# One default for every caller (CLI, eval, trainer config, OpenAIPolicy): a long turn on a busy
# server can take minutes; an episode has its own, longer timeout on top.
DEFAULT_REQUEST_TIMEOUT_S = 300.0
DEFAULT_DEVICE = "cpu"  # local policies: runs anywhere; pass "cuda" to use a GPU


class SamplingParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1)  # per turn


@dataclass(frozen=True)
class TurnRequest:
    messages: list[dict[str, Any]]  # OpenAI chat messages so far
    tools: list[dict[str, Any]]  # OpenAI function-tool specs
    sampling: SamplingParams = field(default_factory=SamplingParams)
    model: str | None = None  # base model or LoRA adapter name; None = the policy's current
    seed: int | None = None  # per-request sampling seed (reproducible evals)


@dataclass(frozen=True)
class Turn:
    message: dict[str, Any]  # {"role": "assistant", "content": ..., "tool_calls": [...]?}
    prompt_ids: list[int]  # the whole prompt as the backend tokenized it
    completion_ids: list[int]  # what the model generated, stop token included if emitted
    logprobs: list[float]  # one per completion id, as the backend reported them
    finish_reason: str  # "stop", "length", "tool_calls"
    model: str  # the base model or adapter that actually served the turn
    latency_s: float


class Policy(Protocol):
    """Anything that plays assistant turns; `model` names the version it serves now.

    A backend is one class with these members; `rollout.policy_spec.open_policy` builds it.
    """

    @property
    def model(self) -> str: ...

    async def complete(self, request: TurnRequest) -> Turn: ...

    async def publish_adapter(self, path: Path, version: str) -> None:
        """Serve the LoRA adapter saved at `path` as `version` and make it the current model
        (requests without `model` get it); the previously published version is dropped."""
        ...

    async def aclose(self) -> None: ...
