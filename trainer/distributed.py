"""Data-parallel training over torch.distributed: one process per device, the same adapter on all.

    every rank: the step's prompts (same seed) -> its share rows[rank::world] -> rollouts
             -> all_gather -> every rank holds all groups, in row order -> the same sequences
             -> its share sequences[rank::world] -> DDP backward (adapter grads all-reduced)
             -> the same optimizer step -> rank 0 saves, publishes, writes; the rest follow

Each rank's loss is weighted by the step's global counts (sequences, or generated tokens for
dapo) times the world size, so DDP's mean over ranks is the single-process gradient. Only the
LoRA weights are trainable, so only they are reduced. `data_parallel: fsdp` shards the base
over the ranks instead of replicating it (trainer.fsdp): the same weighting (FSDP's
reduce-scatter averages too), and rank 0 gathers the adapter and optimizer state to save them.
Launchers: `toolgym train --nproc-per-node N` (torch's own launcher, torchrun's code), or any
that sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (torchrun, accelerate launch);
plain `srun` works with MASTER_ADDR set (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID are read then).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from envs.data.rows import Row
from rollout.engine import RolloutResult
from rollout.summary import summarize
from trainer.errors import ConfigError, TrainingStopped

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = DistContext()


def env_context(env: Mapping[str, str]) -> DistContext | None:
    """The launcher's placement from its variables; None when no launcher set any."""
    if "WORLD_SIZE" in env:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    elif "SLURM_PROCID" in env and "MASTER_ADDR" in env:  # plain srun, one task per device
        names = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    else:
        return None
    try:
        rank, world, local = (int(env.get(name, "0")) for name in names)
    except ValueError:
        values = ", ".join(f"{n}={env.get(n)!r}" for n in names)
        raise ConfigError(f"the launcher's variables are not integers: {values}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"{names[0]}={rank} is not a rank of {names[1]}={world}")
    return DistContext(rank, world, local)


def init_from_env(device: str, timeout_s: float) -> DistContext:
    """Join the process group the launcher described (gloo on CPU, nccl on CUDA); SINGLE when
    this process was started alone. Each CUDA rank takes device `cuda:LOCAL_RANK`, or the one
    device it sees (a scheduler that binds one GPU per task, as `srun --gpus-per-task=1`)."""
    ctx = env_context(os.environ)
    if ctx is None or not ctx.enabled:
        return SINGLE
    cuda = device.startswith("cuda")
    if cuda:
        # "cuda" now means this rank's device
        torch.cuda.set_device(ctx.local_rank % max(torch.cuda.device_count(), 1))
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_PORT", "29500")  # srun: what torchrun would default to
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            rank=ctx.rank,
            world_size=ctx.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    return ctx


def close(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def collective(ctx: DistContext, what: str) -> Iterator[None]:
    """A collective that fails because a peer died or timed out says so in one line."""
    try:
        yield
    except (RuntimeError, dist.DistError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingStopped(
            f"rank {ctx.rank}: {what} failed: another rank stopped or is unreachable ({first})"
        ) from None


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's share: every world_size-th item from its rank (all of them alone)."""
    return list(items[ctx.rank :: ctx.world_size])


def gather(value: T, ctx: DistContext, what: str) -> list[T]:
    """Every rank's `value`, in rank order (a picklable object)."""
    if not ctx.enabled:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    with collective(ctx, what):
        dist.all_gather_object(out, value)
    return out


def sum_figures(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sums over ranks (float64: sums of counts and weighted figures, never means
    of means)."""
    if not ctx.enabled:
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)  # (n,)
    with collective(ctx, "all_reduce of the update's figures"):
        dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]


def barrier(ctx: DistContext, what: str) -> None:
    if ctx.enabled:
        with collective(ctx, what):
            dist.barrier()


def wrap_model(model: Any, ctx: DistContext, mode: str = "ddp", device: str = "cpu") -> Any:
    """The model as the update runs it over the ranks (`mode`: the config's data_parallel).
    Its trainable (LoRA) weights are first broadcast from rank 0, so every rank starts from the
    same adapter; the frozen base is never sent. ddp: DDP over the PEFT model, the adapter's
    gradients averaged in backward. fsdp: the model sharded in place (trainer.fsdp)."""
    if not ctx.enabled:
        return model
    broadcast_trainable(model, ctx, device)
    if mode == "fsdp":
        from trainer.fsdp import Sharded, shard_model

        return Sharded(shard_model(model, ctx, device))
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, init_sync=False, forward_sync_buffers=False)


def broadcast_trainable(model: Any, ctx: DistContext, device: str) -> None:
    """Rank 0's adapter on every rank. A weight still on the CPU (fsdp shards a model loaded
    there) travels through `device`: nccl sends device tensors only."""
    nccl = dist.get_backend() == "nccl"
    with collective(ctx, "broadcast of the adapter"), torch.no_grad():
        for param in trainable(model):
            if nccl and param.device.type == "cpu":
                on_device = param.data.to(device)
                dist.broadcast(on_device, src=0)
                param.data.copy_(on_device)
            else:
                dist.broadcast(param.data, src=0)


def unwrap(model: Any) -> Any:
    """The PEFT model under DDP or trainer.fsdp's wrapper (FSDP shards it in place)."""
    from torch.nn.parallel import DistributedDataParallel

    from trainer.fsdp import Sharded

    return model.module if isinstance(model, DistributedDataParallel | Sharded) else model


def trainable(model: Any) -> list[torch.Tensor]:
    return [p for p in unwrap(model).parameters() if p.requires_grad]


def check_same_adapter(model: Any, ctx: DistContext, step: int) -> None:
    """Stop when the ranks' adapters differ after a step: the update must keep them equal.
    A sharded adapter (fsdp) has no replicas to compare: each rank holds its own part."""
    from trainer.fsdp import is_sharded

    if not ctx.enabled or is_sharded(unwrap(model)):
        return
    with torch.no_grad():
        weights = [p.detach().double() for p in trainable(model)]
        mark = (sum(float(w.sum()) for w in weights), sum(float((w * w).sum()) for w in weights))
    marks = gather(mark, ctx, f"step {step}'s adapter check")
    if len(set(marks)) > 1:
        raise TrainingStopped(f"step {step}: the ranks' adapters differ after the update {marks}")


def save_from_main(model: Any, adapters_dir: Path, version: str, ctx: DistContext) -> None:
    """Rank 0 saves the adapter as `version`. Sharded (fsdp), every rank first sends rank 0
    its part of the LoRA weights: call it on every rank."""
    from trainer.fsdp import gathered_adapter, is_sharded
    from trainer.publish import save_adapter

    inner = unwrap(model)
    if not is_sharded(inner):
        if ctx.is_main:
            save_adapter(inner, adapters_dir, version)
        return
    with collective(ctx, f"gathering adapter {version}"):
        state = gathered_adapter(inner, ctx)
    if ctx.is_main:
        save_adapter(WithState(inner, state), adapters_dir, version)


@dataclass(frozen=True)
class WithState:
    """A PEFT model whose save_pretrained writes `state` (gathered in full) instead of its own
    weights, which are shards."""

    model: Any
    state: dict[str, torch.Tensor]

    def save_pretrained(self, path: Path) -> None:
        self.model.save_pretrained(path, state_dict=self.state)


def optimizer_state(model: Any, optimizer: torch.optim.Optimizer, ctx: DistContext) -> Any:
    """The optimizer's state to checkpoint, complete on rank 0: its own (every rank holds the
    same), or gathered from the shards (fsdp; call it on every rank)."""
    from trainer.fsdp import gathered_optimizer, is_sharded

    inner = unwrap(model)
    if not is_sharded(inner):
        return optimizer.state_dict()
    with collective(ctx, "gathering the optimizer state"):
        return gathered_optimizer(inner, optimizer)


def load_optimizer_state(model: Any, optimizer: torch.optim.Optimizer, state: Any) -> None:
    """Restore a checkpoint's optimizer state (on a sharded model: each rank keeps its part)."""
    from trainer.fsdp import is_sharded, load_optimizer

    inner = unwrap(model)
    if is_sharded(inner):
        load_optimizer(inner, optimizer, state)
    else:
        optimizer.load_state_dict(state)


def rank_file(out: Path, ctx: DistContext) -> Path:
    """Where this rank writes its share of a rollouts file (the file itself when alone)."""
    return out if not ctx.enabled else out.with_suffix(f".rank{ctx.rank}{out.suffix}")


def merge_results(results: list[RolloutResult | None], rows: Sequence[Row]) -> RolloutResult:
    """The ranks' shares as one result over `rows`: trajectories in row order (then sample
    order, as one process plays them), speed over the slowest rank's wall time."""
    played = [r for r in results if r is not None]
    order = {row.id: i for i, row in enumerate(rows)}
    trajectories = sorted(
        (t for r in played for t in r.trajectories), key=lambda t: order.get(t.row_id, len(order))
    )
    wall = max((r.summary.wall_s for r in played), default=0.0)
    episodes = sum(r.summary.episodes_this_run for r in played)
    tokens = sum(r.summary.tokens_per_s * r.summary.wall_s for r in played)
    summary = summarize(trajectories, wall_s=wall).model_copy(
        update={
            "episodes_this_run": episodes,
            "episodes_per_s": episodes / wall if wall else 0.0,
            "tokens_per_s": tokens / wall if wall else 0.0,
        }
    )
    return RolloutResult(trajectories=trajectories, summary=summary)


async def play_shared(
    ctx: DistContext,
    rows: list[Row],
    out: Path,
    play: Callable[[list[Row], Path], Awaitable[RolloutResult]],
) -> RolloutResult:
    """Each rank plays its share of `rows` into its own file; every rank gets all of them."""
    if not ctx.enabled:
        return await play(rows, out)
    mine = shard(rows, ctx)
    result = await play(mine, rank_file(out, ctx)) if mine else None
    return merge_results(gather(result, ctx, f"the rollouts of {out.name}"), rows)


def sum_counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key sums of the ranks' count rows; a key None on every rank stays None."""
    keys = rows[0].keys() if rows else []
    totals: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        totals[key] = sum(values) if values else None
    return totals


async def publish(policy: Any, path: Path, version: str, ctx: DistContext) -> None:
    """Make `version` (saved at `path` by rank 0) the policy of every rank. Servers shared by
    the ranks (a policy with `set_model`) load it once, from rank 0; an in-process policy is
    each rank's own, so each swaps in its copy."""
    if ctx.is_main:
        await policy.publish_adapter(path, version)
    barrier(ctx, f"publishing {version}")
    if ctx.is_main:
        return
    if hasattr(policy, "set_model"):
        policy.set_model(version)
    else:
        await policy.publish_adapter(path, version)


def launch(nproc: int, argv: list[str]) -> None:
    """Run `toolgym <argv>` in `nproc` processes on this machine through torch's own launcher
    (what `torchrun --standalone --nproc-per-node N` does); a rank that fails stops them all
    and is named in one line."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    threads = max(1, (os.cpu_count() or 1) // nproc)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # torchrun's default would be 1
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
         "--module", "trainer.cli", *argv]
    )  # fmt: skip
    try:
        run(args)
    except ChildFailedError as exc:
        raise TrainingStopped(failure_line(exc)) from None
    except SignalException as exc:  # Ctrl-C or a scheduler's SIGTERM: the ranks were stopped
        raise TrainingStopped(
            f"stopped by {exc.sigval.name} (every rank); continue with --resume"
        ) from None


def failure_line(exc: Any) -> str:
    """ChildFailedError as one line naming the rank that failed first."""
    rank, failure = exc.get_first_failure()
    code = failure.exitcode
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}" + (" (its error is above)" if code == 2 else "")
    return f"rank {rank} (pid {failure.pid}) {how}; the other ranks were stopped"
