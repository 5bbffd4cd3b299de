"""`train(config)`: put the pieces together, run the loop, draw the curves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rollout.environments import EnvPool
from rollout.policy import Policy
from trainer.config import TrainConfig
from trainer.errors import ConfigError
from trainer.loop import (
    Run,
    load_trainable,
    make_optimizer,
    resume_point,
    train_loop,
)
from trainer.metrics import MetricsLog
from trainer.publish import Publisher, save_adapter, version_name


@dataclass
class TrainResult:
    output_dir: Path
    version: str
    metrics: Path
    curves: Path


def make_policy(config: TrainConfig) -> tuple[Policy, Publisher]:
    settings = config.policy
    if settings.backend == "local":
        from rollout.local_policy import LocalPolicy

        policy = LocalPolicy.from_pretrained(Path(config.base_model), device=settings.device)
        return policy, Publisher(policy)
    from rollout.openai_policy import OpenAIPolicy
    from rollout.vllm import AdapterClient

    remote = OpenAIPolicy(
        settings.base_urls, config.base_model, timeout_s=settings.request_timeout_s
    )
    client = AdapterClient(settings.base_urls[0])
    return remote, Publisher(remote, client, settings.adapter_dir_on_server)


def make_pool(config: TrainConfig, dataset: Path | None) -> EnvPool:
    env = config.environment
    limits = {"max_tool_calls": config.max_tool_calls, "max_tokens": config.max_trajectory_tokens}
    extra = {"limits": limits, **env.kwargs}
    return EnvPool(
        env.id, dataset=dataset, tools_url=env.tools_url, transport=env.transport, extra=extra
    )


async def train(config: TrainConfig, *, resume: bool = False, echo: bool = True) -> TrainResult:
    state, tensors = resume_point(config, resume)
    if config.train_dataset is None and "dataset" not in config.environment.kwargs:
        raise ConfigError("train_dataset: set the train rows (JSONL) or environment.kwargs.dataset")
    config.output_dir.mkdir(parents=True, exist_ok=True)
    pool = make_pool(config, config.train_dataset)
    val_pool = make_pool(config, config.val_dataset) if config.val_dataset else None
    val_rows = val_pool.rows if val_pool else []
    adapters = config.output_dir / "adapters"
    model, tokenizer = load_trainable(config, adapters / state.version if state else None)
    optimizer, scheduler = make_optimizer(model, config)
    if tensors is not None:
        optimizer.load_state_dict(tensors["optimizer"])
        scheduler.load_state_dict(tensors["scheduler"])
    policy, publisher = make_policy(config)
    version = state.version if state else version_name(0)
    path = adapters / version if state else save_adapter(model, adapters, version)
    await publisher.publish(path, version)
    # Without a KL penalty no reference pass runs, so kl_to_ref is never measured: no column.
    unmeasured = () if config.kl_coef > 0 else ("kl_to_ref",)
    metrics = MetricsLog(config.output_dir, echo=echo, unmeasured=unmeasured)
    run = Run(config, model, tokenizer, optimizer, scheduler, policy, publisher, pool,
              pool.rows, val_rows, metrics, val_pool)  # fmt: skip
    try:
        version = await train_loop(run, (state.step + 1) if state else 1, version)
    finally:
        curves = metrics.plot()
        metrics.close()
        await policy.aclose()
        await pool.aclose()
    return TrainResult(config.output_dir, version, metrics.path, curves)
