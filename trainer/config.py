"""The run configuration: one YAML file, overridable with `--set key=value`, validated up front.

Shaped like the tutorial's step-5 config. Every problem is reported with the key it concerns
and what to do about it, before a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from envs.errors import yaml_problem
from rollout.policy import DEFAULT_DEVICE, DEFAULT_REQUEST_TIMEOUT_S
from trainer.errors import ConfigError

LossType = Literal["grpo", "dr_grpo", "dapo"]


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(default=32, ge=1, le=512)
    alpha: int = Field(default=64, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


class EnvironmentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = "toolgym/FilingsQA-v0"
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to gymnasium.make
    # One server, or its replicas (a list; requests are balanced over them). Else from kwargs;
    # the token from TOOL_BEARER.
    tools_url: str | list[str] | None = None
    transport: Literal["http", "mcp"] | None = None
    # Overrides of the episode's limits (envs.episode.Limits: max_tool_calls, max_turns,
    # max_tokens), merged key by key over the ones the environment was registered with; empty:
    # training plays exactly the registered episode, as `toolgym eval` does.
    limits: dict[str, int] = Field(default_factory=dict)

    @field_validator("kwargs")
    @classmethod
    def _settings_work(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        # The environment reads its grader only when the first episode is made, after the
        # model has loaded; check it with the rest of the file instead.
        from envs.errors import EnvConfigError
        from envs.grading import check_grader

        if "limits" in kwargs:
            # gymnasium.make would replace the registered limits wholesale; one place only.
            raise ValueError(
                "limits: set them in environment.limits, merged key by key over the "
                "registered environment's limits"
            )
        try:
            check_grader(kwargs.get("grader"))
        except EnvConfigError as exc:
            raise ValueError(str(exc)) from None
        return kwargs

    @field_validator("limits", mode="before")
    @classmethod
    def _limits_known(cls, limits: Any) -> Any:
        # parse_limits names a misspelt key with the accepted ones; a budget silently ignored
        # would train a different episode than the one asked for.
        from envs.episode import parse_limits
        from envs.errors import EnvConfigError

        try:
            parse_limits(limits)
        except EnvConfigError as exc:
            raise ValueError(str(exc).removeprefix("limits: ")) from None
        return limits


class PolicySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "vllm"] = "local"
    base_urls: list[str] = Field(default_factory=list)  # vllm: the OpenAI-compatible servers
    adapter_dir_on_server: Path | None = None  # vllm: where the server reads adapters (shared fs)
    device: str = DEFAULT_DEVICE  # local: torch device ("cuda" for a GPU)
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens_per_turn: int = Field(default=256, ge=1)
    concurrency: int = Field(default=32, ge=1)
    request_timeout_s: float = Field(default=DEFAULT_REQUEST_TIMEOUT_S, gt=0)
    episode_timeout_s: float = Field(default=900.0, gt=0)


class RulerSettings(BaseModel):
    """An LLM judge that scores all attempts of a group together (rollout.ruler)."""

    model_config = ConfigDict(extra="forbid")

    judge: str  # NAME@URL: the judge model served by an OpenAI-compatible server
    weight: float = Field(default=1.0, gt=0)  # relative to reward.grader; blend = normalised
    rubric: str | None = Field(default=None, min_length=1)  # appended to the judge's criteria
    # JSONL of the judge's replies by prompt; default <output_dir>/judge-cache.jsonl
    cache: Path | None = None
    api_key_env: str | None = None  # the variable holding the judge's key, never the key
    timeout_s: float = Field(default=120.0, gt=0)  # per request
    max_retries: int = Field(default=2, ge=0, le=10)  # per group: unreachable or unreadable
    max_tokens: int = Field(default=1024, ge=16)  # the reply: a score and reason per attempt
    # Consecutive steps whose every group failed judging (each skipped) before the run stops.
    max_failed_steps: int = Field(default=3, ge=1)

    @field_validator("judge")
    @classmethod
    def _judge_spelling(cls, value: str) -> str:
        from rollout.errors import RolloutConfigError
        from rollout.ruler import parse_judge

        try:
            parse_judge(value)
        except RolloutConfigError as exc:
            raise ValueError(str(exc)) from None
        return value


class RewardSettings(BaseModel):
    """Where rewards come from: the environment's grader (reference answers), a RULER judge,
    or both, blended by their weights normalised to sum to 1. No section: the grader alone."""

    model_config = ConfigDict(extra="forbid")

    # None: 1 without a judge, 0 with one (a judge alone needs no reference answers)
    grader: float | None = Field(default=None, ge=0)
    ruler: RulerSettings | None = None

    @model_validator(mode="after")
    def _some_reward(self) -> RewardSettings:
        if self.ruler is None and self.grader == 0:
            raise ValueError(
                "grader: 0 leaves no reward; add reward.ruler (a judge) or give the grader a weight"
            )
        return self

    @property
    def grader_weight(self) -> float:
        """The grader's share of the blend, in [0, 1]."""
        grader = self.grader if self.grader is not None else (0.0 if self.ruler else 1.0)
        judge = self.ruler.weight if self.ruler else 0.0
        return grader / (grader + judge)

    @property
    def ruler_weight(self) -> float:
        """The judge's share of the blend, in [0, 1] (0 without a judge)."""
        return 1.0 - self.grader_weight if self.ruler else 0.0

    @property
    def needs_references(self) -> bool:
        """Whether every row needs a reference answer (the grader has a share)."""
        return self.grader_weight > 0


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["grpo"] = "grpo"
    loss_type: LossType = "grpo"
    base_model: str = Field(min_length=1)  # a hub name or a local directory
    environment: EnvironmentSettings = Field(default_factory=EnvironmentSettings)
    train_dataset: Path | None = None
    val_dataset: Path | None = None
    policy: PolicySettings = Field(default_factory=PolicySettings)
    reward: RewardSettings = Field(default_factory=RewardSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    group_size: int = Field(default=8, ge=2)
    batch_size: int = Field(default=8, ge=1)  # prompts per step
    # Dynamic sampling (DAPO): a group whose episodes all got the same reward has no advantage
    # and trains nothing. Up to this many extra rollout rounds per step play fresh train prompts
    # in place of such groups, until the step has batch_size groups with signal (more are
    # dropped). 0 = off: each step trains on whatever its batch_size prompts gave.
    refill_rounds: int = Field(default=0, ge=0)
    steps: int | None = Field(default=None, ge=1)  # default: epochs over the train rows
    epochs: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=1e-5, gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    # Optimizer steps per rollout batch. The ratio's denominator is the behaviour policy (the
    # logprobs the backend reported), so from the second pass on clip_eps bounds the move.
    updates_per_batch: int = Field(default=1, ge=1)
    clip_eps: float = Field(default=0.2, gt=0)  # the ratio new/behaviour is kept in 1 +- clip_eps
    kl_coef: float = Field(default=0.0, ge=0)
    scale_rewards: bool = False  # divide advantages by the group's std
    # The trainer's sequence length, in the policy's real tokens: each trajectory segment is
    # truncated to it before the update, and dr_grpo divides by it (its constant "generation
    # budget": no sequence can carry more tokens). Episode limits are environment.limits.
    max_sequence_tokens: int = Field(default=4096, ge=16)
    micro_batch_size: int = Field(default=4, ge=1)  # sequences per forward pass
    # Keep only each decoder layer's input for backward and recompute the layer there: the
    # activations shrink ~layers-fold for ~1/3 more compute (`toolgym plan` shows both).
    gradient_checkpointing: bool = False
    eval_every: int = Field(default=5, ge=1)
    eval_rows: int | None = Field(default=None, ge=1)
    eval_temperature: float = Field(default=0.0, ge=0.0)  # 0 = greedy: a steadier val curve
    # Failed episodes (dead tool server, policy timeouts) tolerated per rollout batch before the
    # run stops; None = 10% of the batch. Failed episodes never enter the update.
    max_failed_episodes: int | None = Field(default=None, ge=0)
    max_kl: float = Field(default=10.0, gt=0)  # stop when kl_to_ref exceeds this
    seed: int = 0
    output_dir: Path = Path("runs/toolgym")
    # Data-parallel runs (trainer.distributed): how long a rank waits for the others at a
    # collective (each rollout round ends with one, so the slowest rank's lead must fit)
    # before the run stops. A rank that dies is noticed by the launcher at once, not after this.
    distributed_timeout_s: float = Field(default=1800.0, gt=0)
    # How several ranks hold the model: ddp, a whole replica on each (the adapter's gradients
    # averaged); fsdp, the base sharded over them (trainer.fsdp), for a base that does not fit
    # on one device. A single process trains the same either way.
    data_parallel: Literal["ddp", "fsdp"] = "ddp"

    @model_validator(mode="after")
    def _backend_needs(self) -> TrainConfig:
        if self.policy.backend == "vllm" and not self.policy.base_urls:
            raise ValueError(
                "policy.base_urls: the vllm backend needs the server URL(s), e.g. "
                "['http://127.0.0.1:8000/v1'] (start one with `toolgym vllm serve`)"
            )
        if self.data_parallel == "fsdp" and self.policy.backend == "local":
            # generate() runs outside the sharded root's forward, on shards: it cannot work
            raise ValueError(
                "data_parallel: fsdp shards the model, which then cannot generate rollouts "
                "in-process: use policy.backend: vllm, or data_parallel: ddp"
            )
        return self

    def resolve(self, base: Path) -> TrainConfig:
        """Relative paths in a config file are relative to that file."""
        updates: dict[str, Any] = {}
        for key in ("train_dataset", "val_dataset", "output_dir"):
            value = getattr(self, key)
            if value is not None and not value.is_absolute():
                updates[key] = base / value
        if not Path(self.base_model).is_absolute() and (base / self.base_model).exists():
            updates["base_model"] = str(base / self.base_model)
        ruler = self.reward.ruler
        if ruler is not None and ruler.cache is not None and not ruler.cache.is_absolute():
            resolved = ruler.model_copy(update={"cache": base / ruler.cache})
            updates["reward"] = self.reward.model_copy(update={"ruler": resolved})
        return self.model_copy(update=updates)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: write key=value, e.g. --set learning_rate=2e-5")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: the key is missing, e.g. --set learning_rate=2e-5")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:  # the value is YAML: "[q_proj, v_proj]", "{rank: 8}"
        problem = yaml_problem(exc)
        raise ConfigError(f"--set {item!r}: the value is not valid YAML: {problem}") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


# Top-level keys that used to exist, and where their meaning went: one meaning per key.
MOVED_KEYS = {
    "max_tool_calls": "moved to environment.limits.max_tool_calls (an override of the "
    "registered environment's limit)",
    "max_trajectory_tokens": "moved: the trainer's truncation is max_sequence_tokens, the "
    "episode's token budget is environment.limits.max_tokens",
}


def _explain(exc: ValidationError, source: str) -> ConfigError:
    """Every problem, each with its key, in one line (the CLI prints errors as one line)."""
    problems = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(p) for p in error["loc"]) or "(file)"
        message = error["msg"]
        if error["type"] == "extra_forbidden" and key in MOVED_KEYS:
            message = MOVED_KEYS[key]
        elif error["type"] == "extra_forbidden":
            message = "unknown key: check its spelling against configs/*.yaml"
        elif error["type"] == "missing":
            message = "required: add it to the file or pass --set " + key + "=..."
        elif error["type"] == "value_error":  # our validators' messages, without the prefix
            message = message.removeprefix("Value error, ")
        problems.append(f"{key}: {message}")
    return ConfigError(f"{source}: invalid configuration: " + "; ".join(problems))


def load_config(path: Path, overrides: list[str] | None = None) -> TrainConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {path}: not a UTF-8 text file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    data = apply_overrides(data, overrides or [])
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, str(path)) from None
    config = config.resolve(path.resolve().parent)
    model = Path(config.base_model)
    if model.is_dir() and not (model / "config.json").is_file():
        # A directory is taken for the model itself; transformers' own error is many lines.
        raise ConfigError(f"{path}: base_model: {model} has no config.json, so it is no model")
    return config
