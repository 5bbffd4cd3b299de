"""The training loop: rollouts with the current adapter, one GRPO update, publish, repeat.

    step k: rows for k -> rollout engine (group_size episodes each, policy version v{k-1})
            -> [refill rounds: fresh prompts for the groups that carried no signal]
            -> advantages -> grpo_update -> save adapter v{k} -> publish -> checkpoint
            -> every eval_every steps: val reward

With a judge (reward.ruler), a group it fails on is left out of the update and counted; a step
whose every group failed is skipped (no update, adapter or checkpoint), and
`max_failed_steps` such steps in a row stop the run.

Everything a step writes lives under `output_dir`: rollouts/step-00k.jsonl (every round of the
step, resumable on its own), adapters/v000k, checkpoint/, metrics.jsonl, tensorboard/,
curves.png. The rollout files are written for resuming and reading; the step trains on the
trajectories the engine returns. Data-parallel (trainer.distributed), each rank plays its share
of every round into its own rollouts/step-00k.rank{r}.jsonl and rank 0 writes everything else.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.data.rows import Row
from rollout.engine import RolloutResult, RolloutSettings, run_rollouts
from rollout.environments import EnvPool
from rollout.policy import Policy, SamplingParams
from rollout.ruler import RulerScorer
from rollout.summary import RolloutSummary, summarize
from rollout.trajectory import Trajectory, TrajectoryGroup, group_trajectories
from trainer.batch import build_sequences
from trainer.checkpoint import TrainState, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.distributed import (
    SINGLE,
    DistContext,
    check_same_adapter,
    gather,
    optimizer_state,
    play_shared,
    publish,
    save_from_main,
    sum_counts,
)
from trainer.errors import ConfigError, TrainingStopped
from trainer.metrics import MetricsLog
from trainer.publish import version_name
from trainer.reward import judge_metrics, judge_outcome
from trainer.step_rows import refill_count, refill_order, rows_for_step
from trainer.update import grpo_update


@dataclass
class Run:
    """What the loop holds between steps."""

    config: TrainConfig
    model: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    policy: Policy
    pool: EnvPool
    train_rows: list[Row]
    val_rows: list[Row]
    metrics: MetricsLog
    val_pool: EnvPool | None = None  # environments over the val rows (else `pool`)
    scorer: RulerScorer | None = None  # reward.ruler: the judge scoring every group
    dist: DistContext = SINGLE  # data-parallel: this process's rank (trainer.distributed)
    ddp: Any = None  # `model` wrapped for several ranks: DDP, or sharded (trainer.fsdp)

    @property
    def trained(self) -> Any:
        """What the update runs through: DDP or FSDP over the model, or the model alone."""
        return self.ddp if self.ddp is not None else self.model

    def settings(
        self, group_size: int, prefix: str, version: str, temperature: float | None = None
    ) -> RolloutSettings:
        policy = self.config.policy
        return RolloutSettings(
            env_id=self.config.environment.id,
            group_size=group_size,
            concurrency=policy.concurrency,
            episode_timeout_s=policy.episode_timeout_s,
            sampling=SamplingParams(
                temperature=policy.temperature if temperature is None else temperature,
                top_p=policy.top_p,
                max_tokens=policy.max_tokens_per_turn,
            ),
            seed=self.config.seed,
            group_prefix=prefix,
            policy_version=version,
            progress=False,
            max_failures=self.config.max_failed_episodes,
        )

    async def rollouts(
        self,
        rows: list[Row],
        group_size: int,
        out: Path,
        prefix: str,
        version: str,
        temperature: float | None = None,
        pool: EnvPool | None = None,
    ) -> RolloutResult:
        """Every rank plays its share of `rows` and gets all of them back (trainer.distributed)."""
        settings = self.settings(group_size, prefix, version, temperature)
        factory = (pool or self.pool).factory()

        async def play(share: list[Row], path: Path) -> RolloutResult:
            return await run_rollouts(
                share, factory, self.policy, settings, path, scorer=self.scorer
            )

        return await play_shared(self.dist, rows, out, play)


@dataclass(frozen=True)
class StepRollouts:
    """Every round a step played, in play order: its first prompts, then each refill round."""

    rounds: list[RolloutResult]
    prompts: int  # rows played, all rounds together

    @property
    def trajectories(self) -> list[Trajectory]:
        return [t for result in self.rounds for t in result.trajectories]

    def groups(self) -> list[TrajectoryGroup]:
        return group_trajectories(self.trajectories)

    def summary(self) -> RolloutSummary:
        """Rewards over every round's episodes; speed over the rounds' own wall time."""
        wall = sum(r.summary.wall_s for r in self.rounds)
        # a round's speed counts only what it played itself (not what it found on resume)
        tokens = sum(r.summary.tokens_per_s * r.summary.wall_s for r in self.rounds)
        episodes = sum(r.summary.episodes_this_run for r in self.rounds)
        summary = summarize(self.trajectories, wall_s=wall)
        return summary.model_copy(
            update={
                "episodes_this_run": episodes,
                "episodes_per_s": episodes / wall if wall else 0.0,
                "tokens_per_s": tokens / wall if wall else 0.0,
            }
        )


async def play_step(run: Run, step: int, version: str) -> StepRollouts:
    """The step's prompts, then up to `refill_rounds` rounds of fresh prompts until it has
    `batch_size` groups with signal. Every round appends to the step's one rollouts file under
    its own group prefix, so a killed step resumes each round where it stopped."""
    config = run.config
    out = config.output_dir / "rollouts" / f"step-{step:05d}.jsonl"
    rows = rows_for_step(run.train_rows, step, config.batch_size, config.seed)
    rounds = [await run.rollouts(rows, config.group_size, out, f"step{step}/", version)]
    prompts = len(rows)
    candidates = refill_order(run.train_rows, step, config.batch_size, config.seed)
    for round_ in range(1, config.refill_rounds + 1):
        groups = StepRollouts(rounds, prompts).groups()
        signal = sum(1 for g in groups if g.has_signal)
        missing = config.batch_size - signal
        if missing <= 0:
            break
        drawn = prompts - len(rows)
        count = refill_count(missing, signal, len(groups), config.batch_size)
        fresh = candidates[drawn : drawn + count]
        if not fresh:  # every train row has been played in this step
            break
        prefix = f"step{step}r{round_}/"
        rounds.append(await run.rollouts(fresh, config.group_size, out, prefix, version))
        prompts += len(fresh)
    return StepRollouts(rounds, prompts)


def judge_failure(groups: list[TrajectoryGroup]) -> tuple[str, int] | None:
    """Why a step is skipped, and how many groups failed judging: when every group that
    reached the judge failed; else None."""
    judged, failed = judge_outcome(groups)
    if judged or not failed:
        return None
    errors = [t.error.message for g in groups for t in g.trajectories if t.judge_failed and t.error]
    return f"the judge failed on all {failed} groups ({errors[-1]})", failed


async def train_step(run: Run, step: int, version: str) -> tuple[dict[str, Any], str]:
    """One step's metrics row and the version it published. A step whose every group failed
    judging publishes nothing: its row says `skipped` and the version stays."""
    config = run.config
    started = time.perf_counter()
    played = await play_step(run, step, version)
    summary = played.summary()
    groups = played.groups()
    failure = judge_failure(groups) if run.scorer is not None else None
    if failure is not None:
        reason, failed = failure
        return {
            "step": step,
            "version": version,
            "val_reward": None,
            "reward_mean": None,
            "skipped": reason,
            "judge_failed_groups": failed,
            "prompts_played": played.prompts,
            "step_s": time.perf_counter() - started,
        }, version
    sequences, stats = build_sequences(
        groups,
        scale_rewards=config.scale_rewards,
        max_tokens=config.max_sequence_tokens,
        max_groups=config.batch_size,
    )
    pad_id = run.tokenizer.pad_token_id if run.tokenizer.pad_token_id is not None else 0
    update_started = time.perf_counter()
    result = None
    if sequences:
        result = grpo_update(
            run.trained, run.optimizer, run.scheduler, sequences, config, pad_id, run.dist
        )
        check_same_adapter(run.model, run.dist, step)
        if not math.isfinite(result.loss):
            raise TrainingStopped(
                f"step {step}: the loss is {result.loss}; lower learning_rate "
                f"(now {config.learning_rate:g}) or raise max_grad_norm's strictness"
            )
        if result.kl_to_ref is not None and result.kl_to_ref > config.max_kl:
            raise TrainingStopped(
                f"step {step}: kl_to_ref {result.kl_to_ref:.3f} passed max_kl {config.max_kl:g}; "
                "the policy drifted: lower learning_rate or raise kl_coef"
            )
    update_s = time.perf_counter() - update_started
    new_version = version_name(step)
    path = config.output_dir / "adapters" / new_version
    save_from_main(run.model, path.parent, new_version, run.dist)
    await publish(run.policy, path, new_version, run.dist)
    row: dict[str, Any] = {
        "step": step,
        "version": new_version,
        "val_reward": None,
        "reward_mean": summary.reward.mean,
        "reward_std": summary.reward.std,
        "tool_calls": summary.tool_calls_mean,
        "kl_to_ref": result.kl_to_ref if result else None,  # None: not measured (kl_coef 0)
        "loss": result.loss if result else 0.0,
        "grad_norm": result.grad_norm if result else 0.0,
        "entropy": result.entropy if result else None,
        "clip_fraction": result.clip_fraction if result else 0.0,
        "logprob_mismatch": result.logprob_mismatch if result else None,
        "zero_signal": stats.zero_signal_groups / max(stats.groups, 1),  # of all played
        "signal_groups": stats.signal_groups,  # trained on
        "prompts_played": played.prompts,
        "refill_rounds_used": len(played.rounds) - 1,
        "updates": result.passes if result else 0,  # optimizer steps taken
        "failed_episodes": stats.failed_episodes,
        "token_mismatches": summary.token_mismatches,
        "tokens_per_s": (result.tokens / update_s) if result and update_s > 0 else 0.0,
        "rollout_tokens_per_s": summary.tokens_per_s,
        "learning_rate": run.scheduler.get_last_lr()[0],
        "step_s": time.perf_counter() - started,
    }
    if run.scorer is not None:
        row["judge_failed_groups"] = stats.judge_failed_groups
    return row, new_version


def val_rows_played(config: TrainConfig, val_rows: list[Row]) -> list[Row]:
    """The val rows each evaluation plays: the first `eval_rows`, or all of them."""
    return val_rows[: config.eval_rows] if config.eval_rows else val_rows


async def evaluate(run: Run, step: int, version: str) -> dict[str, Any]:
    """The val figures of the metrics row: `val_reward` under the same reward blend as
    training. With a judge, val rows it failed on are counted and left out of the mean (None
    when it failed on all of them); each val group is one greedy attempt, judged alone."""
    config = run.config
    rows = val_rows_played(config, run.val_rows)
    out = config.output_dir / "eval" / f"step-{step:05d}.jsonl"
    played = await run.rollouts(
        rows, 1, out, f"eval{step}/", version, config.eval_temperature, run.val_pool
    )
    reward = played.summary.reward
    if run.scorer is None:
        return {"val_reward": reward.mean}
    _, failed = judge_outcome(played.groups())
    return {"val_reward": reward.mean if reward.n else None, "val_judge_failed_groups": failed}


def total_steps(config: TrainConfig, rows: int) -> int:
    return config.steps or config.epochs * math.ceil(rows / config.batch_size)


def with_judge_stats(run: Run, row: dict[str, Any]) -> dict[str, Any]:
    """The row with what judging cost since the last row (train and val rollouts)."""
    if run.scorer is not None:  # every rank judged its share of the groups
        stats = judge_metrics(run.scorer.take_stats())
        row.update(sum_counts(gather(stats, run.dist, "the judge's figures")))
    return row


async def train_loop(run: Run, first_step: int, version: str) -> str:
    config = run.config
    last = total_steps(config, len(run.train_rows))
    if first_step == 1 and run.val_rows:
        run.metrics.log(with_judge_stats(run, {"step": 0, **await evaluate(run, 0, version)}))
    skipped_in_a_row: list[int] = []
    for step in range(first_step, last + 1):
        row, version = await train_step(run, step, version)
        skipped = row.get("skipped")
        if not skipped and run.val_rows and (step % config.eval_every == 0 or step == last):
            row.update(await evaluate(run, step, version))
        run.metrics.log(with_judge_stats(run, row))
        if skipped:
            # No update and no checkpoint: a resume plays this step again, and the engine
            # asks the judge again about its stored episodes instead of replaying them.
            if run.dist.is_main:
                print(f"step {step} skipped: {skipped}", file=sys.stderr, flush=True)
            skipped_in_a_row.append(step)
            stop_after_judge_failures(run, skipped_in_a_row, skipped)
            continue
        skipped_in_a_row = []
        # every rank holds the same optimizer state, or (fsdp) sends rank 0 its part
        gathered = optimizer_state(run.model, run.optimizer, run.dist)
        if run.dist.is_main:
            state = TrainState(step=step, version=version, base_model=config.base_model,
                               seed=config.seed, world_size=run.dist.world_size,
                               data_parallel=config.data_parallel)  # fmt: skip
            save_checkpoint(config.output_dir, state, run.optimizer, run.scheduler, gathered)
    return version


def stop_after_judge_failures(run: Run, steps: list[int], reason: str) -> None:
    ruler = run.config.reward.ruler
    if ruler is None or len(steps) < ruler.max_failed_steps:
        return
    which = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
    checkpointed = (run.config.output_dir / "checkpoint" / "state.json").exists()
    rerun = "rerun with --resume" if checkpointed else "rerun the same command"
    raise TrainingStopped(
        f"{which} skipped: the judge failed on every group, {len(steps)} step(s) in a row "
        f"(reward.ruler.max_failed_steps); last: {reason}. Check that {ruler.judge} answers, "
        f"then {rerun}: the episodes already played are judged again, not replayed"
    )


def resume_point(
    config: TrainConfig, resume: bool, world_size: int = 1
) -> tuple[TrainState | None, Any]:
    checkpoint = config.output_dir / "checkpoint" / "state.json"
    if not resume:
        if checkpoint.exists():
            raise ConfigError(
                f"{config.output_dir} already holds a run: pass --resume to continue it, "
                "or set output_dir to a new directory"
            )
        return None, None
    return load_checkpoint(config.output_dir, config.base_model, world_size, config.data_parallel)
