"""`train(config)`: put the pieces together, run the loop, draw the curves."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from envs.episode import Limits, parse_limits
from rollout.environments import EnvPool
from rollout.lora_fold import TIED_HEAD_WARNING
from rollout.policy import Policy
from rollout.policy_spec import LocalSpec, PolicySpec, ServerSpec, open_policy
from trainer.config import TrainConfig
from trainer.distributed import (
    SINGLE,
    DistContext,
    load_optimizer_state,
    publish,
    save_from_main,
    wrap_model,
)
from trainer.errors import ConfigError
from trainer.loop import Run, resume_point, train_loop, val_rows_played
from trainer.metrics import JUDGE_COLUMNS, MetricsLog
from trainer.publish import version_name
from trainer.reward import check_labels, make_scorer


@dataclass
class TrainResult:
    output_dir: Path
    version: str
    metrics: Path
    curves: Path
    # (step, val reward) at each evaluation of this run and any it resumed; step 0: before
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve_rows: int = 0  # val rows each of those evaluations played

    @property
    def adapter(self) -> Path:
        """The last published adapter: the run's result."""
        return self.output_dir / "adapters" / self.version


def make_policy(config: TrainConfig) -> Policy:
    """The rollout policy for `config.policy`, built by the same factory as every CLI verb."""
    settings = config.policy
    spec: PolicySpec
    if settings.backend == "local":
        spec = LocalSpec(Path(config.base_model), device=settings.device)
    else:
        spec = ServerSpec(
            config.base_model,
            tuple(settings.base_urls),
            settings.request_timeout_s,
            settings.adapter_dir_on_server,
        )
    return open_policy(spec)


def load_trainable(
    config: TrainConfig, adapter: Path | None, sharded: bool = False
) -> tuple[Any, Any]:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    base: Any = AutoModelForCausalLM.from_pretrained(config.base_model)
    if not sharded:  # fsdp moves each shard to the device as it makes it: no whole replica
        base = base.to(config.policy.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TIED_HEAD_WARNING)
        if adapter is not None:
            model = PeftModel.from_pretrained(base, adapter, is_trainable=True)
            return checkpointed(model, config), tokenizer
        lora = LoraConfig(
            r=config.lora.rank,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        return checkpointed(get_peft_model(base, lora), config), tokenizer


def checkpointed(model: Any, config: TrainConfig) -> Any:
    """`model` with gradient checkpointing on when the config asks. Non-reentrant: with a frozen
    base the layers' inputs need no requires_grad for the LoRA weights inside to get gradients
    (tests/trainer/test_memory_levers.py compares them with and without)."""
    if not config.gradient_checkpointing:
        return model
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers 5.23 names it so and deprecates the old name
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False  # this model never generates; says so before transformers warns
    return model


def make_optimizer(model: Any, config: TrainConfig) -> tuple[Any, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = config.warmup_steps

    def schedule(step: int) -> float:
        return min(1.0, (step + 1) / warmup) if warmup else 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def episode_limits(env_id: str, overrides: Mapping[str, int]) -> Limits | None:
    """The registered environment's limits with the train config's overrides, key by key.

    gymnasium.make replaces a registered kwarg wholesale, so passing only the overrides would
    reset every other limit to its default. None when nothing is overridden: the environment
    is then made with its registered kwargs untouched, exactly as `toolgym eval` makes it.
    """
    if not overrides:
        return None
    registered = parse_limits(gym.spec(env_id).kwargs.get("limits")) or Limits()
    return parse_limits({**registered.model_dump(), **overrides})


def make_pool(config: TrainConfig, dataset: Path | None) -> EnvPool:
    env = config.environment
    extra = dict(env.kwargs)
    # An unknown id is left for EnvPool, whose error lists the registered ones.
    if env.limits and env.id in gym.registry:
        extra["limits"] = episode_limits(env.id, env.limits)
    return EnvPool(
        env.id, dataset=dataset, tools_url=env.tools_url, transport=env.transport, extra=extra
    )


async def close_pools(*pools: EnvPool | None) -> None:
    for pool in pools:
        if pool is not None:
            await pool.aclose()


async def train(
    config: TrainConfig, *, resume: bool = False, echo: bool = True, dist: DistContext = SINGLE
) -> TrainResult:
    """The whole run; with `dist` (trainer.distributed) this process is one of its ranks."""
    state, tensors = resume_point(config, resume, dist.world_size)
    if config.train_dataset is None and "dataset" not in config.environment.kwargs:
        raise ConfigError("train_dataset: set the train rows (JSONL) or environment.kwargs.dataset")
    config.output_dir.mkdir(parents=True, exist_ok=True)
    pool = make_pool(config, config.train_dataset)
    val_pool = make_pool(config, config.val_dataset) if config.val_dataset else None
    val_rows = val_pool.rows if val_pool else []
    # Rows without reference answers are refused here when the grader has a share of the
    # reward: before a model is loaded, not in the first episode.
    try:
        check_labels(
            config, pool.rows, config.train_dataset or config.environment.kwargs["dataset"]
        )
        check_labels(config, val_rows, config.val_dataset)
    except ConfigError:
        await close_pools(pool, val_pool)
        raise
    adapters = config.output_dir / "adapters"
    sharded = dist.enabled and config.data_parallel == "fsdp"
    model, tokenizer = load_trainable(config, adapters / state.version if state else None, sharded)
    # wrapped before the optimizer is made: fsdp replaces the weights by their shards
    wrapped = (
        wrap_model(model, dist, config.data_parallel, config.policy.device)
        if dist.enabled
        else None
    )
    optimizer, scheduler = make_optimizer(model, config)
    if tensors is not None:
        load_optimizer_state(model, optimizer, tensors["optimizer"])
        scheduler.load_state_dict(tensors["scheduler"])
    policy = make_policy(config)
    version = state.version if state else version_name(0)
    if state is None:
        save_from_main(model, adapters, version, dist)
    await publish(policy, adapters / version, version, dist)
    # Without a KL penalty no reference pass runs, so kl_to_ref is never measured: no column.
    unmeasured: tuple[str, ...] = () if config.kl_coef > 0 else ("kl_to_ref",)
    if config.reward.ruler is None:  # no judge: its columns would be dashes only
        unmeasured += JUDGE_COLUMNS
    metrics = MetricsLog(config.output_dir, echo=echo, unmeasured=unmeasured, write=dist.is_main)
    run = Run(config, model, tokenizer, optimizer, scheduler, policy, pool,
              pool.rows, val_rows, metrics, val_pool,
              make_scorer(config, dist.rank if dist.enabled else None),
              dist, wrapped)  # fmt: skip
    try:
        version = await train_loop(run, (state.step + 1) if state else 1, version)
    finally:
        curves = metrics.plot()
        metrics.close()
        await policy.aclose()
        await close_pools(pool, val_pool)
    val_curve = [
        (r["step"], r["val_reward"]) for r in metrics.rows if r.get("val_reward") is not None
    ]
    curve_rows = len(val_rows_played(config, val_rows))
    return TrainResult(config.output_dir, version, metrics.path, curves, val_curve, curve_rows)
