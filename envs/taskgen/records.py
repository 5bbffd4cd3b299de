"""The typed records the task generator hands between its steps.

    ToolInfo      a tool as discovered: schema, annotations, whether it may be called
    Observation   one exploration call (or resource read) and what it returned
    CandidateTask what the model proposed, schema-checked
    KeptTask      a task that passed every check, with the tools behind its evidence

The exploration's observations are the only ground truth: a task is kept only when its answer
can be found in the observations it cites, so each of these records keeps the ids that tie a
task back to them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from envs.errors import EnvError

RESOURCE_TOOL = "resource"  # Observation.tool of a resource read (not a tool call)


class TaskgenError(EnvError):
    """The generator cannot produce a dataset: an unusable model, no valid tasks, no tools it
    may call. The CLI prints it as one line and exits 2."""


class ToolInfo(BaseModel):
    """A tool as its server lists it. `read_only` is the MCP annotation readOnlyHint as sent
    (None: not annotated, which MCP's defaults read as "may write")."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=dict)
    read_only: bool | None = None
    annotations: dict[str, Any] = Field(default_factory=dict)
    skipped: str | None = None  # why exploration never calls it (bad schema, may write)


class Observation(BaseModel):
    """One exploration step: a tool call (or a resource read, tool == "resource")."""

    id: str  # "o1", "o2", ... in the order they were made
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    text: str
    is_error: bool = False

    @property
    def is_resource(self) -> bool:
        return self.tool == RESOURCE_TOOL


class CandidateTask(BaseModel):
    """A task as the model must write it. Anything else in its JSON is ignored; anything
    missing or of the wrong type drops the task (reason `schema`)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=8, max_length=2000)
    reference_answer: str | None = Field(default=None, max_length=500)
    observation_ids: list[str] = Field(min_length=1)
    task_type: str = Field(min_length=1, max_length=40)

    @field_validator("prompt", "task_type")
    @classmethod
    def _stripped(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("empty")
        return value

    @field_validator("reference_answer")
    @classmethod
    def _answer(cls, value: str | None) -> str | None:
        """An empty answer means "no checkable answer", as null does."""
        if value is None:
            return None
        value = " ".join(value.split())
        return value or None

    @field_validator("task_type")
    @classmethod
    def _snake(cls, value: str) -> str:
        return "_".join(value.lower().replace("-", " ").split())


class KeptTask(BaseModel):
    """A task that passed every check; `source_tools` produced the observations it cites."""

    task: CandidateTask
    source_tools: list[str]
