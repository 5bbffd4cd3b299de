"""Tasks from any tool server: explore it read-only, have a model write tasks grounded in what
was observed, keep only the tasks the observations support.

    discover (explore.discover_tools)   the env's own tool client: tools, annotations, resources
    explore  (explore.Explorer)         read-only calls, arguments from schemas and earlier outputs
    write    (generate.TaskWriter)      an OpenAI-compatible model, JSON task lists, retried
    check    (checks.TaskChecker)       schema, cited evidence, no tool names, duplicates
    dedup    (dedup)                    near-duplicate prompts by embedding cosine
    rows     (output)                   rows, a stratified split, an all-or-nothing write

`pipeline.generate_tasks` runs the first five; `toolgym tasks generate` (rollout.tasks_cli)
adds the difficulty probe, which needs a policy and therefore rollout.
"""

from envs.taskgen.model import ModelConfig
from envs.taskgen.pipeline import GenerationRequest, GenerationResult, generate_tasks
from envs.taskgen.records import CandidateTask, KeptTask, Observation, TaskgenError, ToolInfo

__all__ = [
    "CandidateTask",
    "GenerationRequest",
    "GenerationResult",
    "KeptTask",
    "ModelConfig",
    "Observation",
    "TaskgenError",
    "ToolInfo",
    "generate_tasks",
]
