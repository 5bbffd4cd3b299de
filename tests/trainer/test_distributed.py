"""Data-parallel updates on CPU (gloo, 2 processes): the same step as one process, equal ranks.

Two ranks each train on their share of a fixed set of sequences through DDP; after every
optimizer step their adapters must equal each other and the single-process update over all the
sequences. Without the gradient all-reduce (no DDP) each rank would step on its own share
alone: measured, they then differ from one process by up to ~1e-2 (and from each other). Without
the world-size factor in the micro-batch shares the step would be half the single one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rankkit import assert_same_step_figures
from trainer.batch import TrainSequence
from trainer.config import TrainConfig
from trainer.distributed import SINGLE, DistContext, env_context, shard, trainable, wrap_model
from trainer.errors import ConfigError, TrainingStopped
from trainer.update import grpo_update

# (loss_type, kl_coef, micro_batch_size, sequences used): uneven shares and micro-batch counts,
# token-weighted dapo, the reference pass through the unwrapped model, and a rank left with
# no sequence at all (one sequence over two ranks)
CASES = [("grpo", 0.0, 1, 5), ("dapo", 0.1, 2, 5), ("dr_grpo", 0.0, 4, 5), ("grpo", 0.0, 1, 1)]
STEPS = 2


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16)
        self.adapter_on = True

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        logits = self.head(self.embed(input_ids))  # (b, s, vocab)
        return SimpleNamespace(logits=logits if self.adapter_on else logits * 0.5)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:  # as peft's PeftModel offers
        self.adapter_on = False
        try:
            yield
        finally:
            self.adapter_on = True


SEQUENCES = [
    TrainSequence([1, 2, 3, 4, 5], [0, 0, 1, 1, 1], [-2.0] * 5, 0.5),
    TrainSequence([1, 6, 7], [0, 1, 1], [-2.5] * 3, -0.5),
    TrainSequence([2, 3, 9, 9, 9, 9, 4], [0, 0, 1, 1, 1, 1, 1], [-3.0] * 7, 1.0),
    TrainSequence([5, 4, 3, 2, 1, 0, 8, 8], [0, 1, 1, 1, 1, 1, 1, 1], [-2.0] * 8, -1.0),
    TrainSequence([7, 7], [0, 1], [-1.0] * 2, 0.25),
]


def train_case(case: tuple[str, float, int, int], ctx: DistContext) -> list[dict[str, Any]]:
    """STEPS updates of a fresh TinyLM on the case's sequences -> per step: weights, figures."""
    loss_type, kl_coef, micro, count = case
    config = TrainConfig.model_validate(
        {"base_model": "m", "loss_type": loss_type, "kl_coef": kl_coef,
         "micro_batch_size": micro, "max_grad_norm": 1e9}
    )  # fmt: skip
    model = TinyLM()
    trained = wrap_model(model, ctx)
    optimizer = torch.optim.SGD(trainable(model), lr=0.5)  # plain SGD: a scale error shows
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    steps = []
    for _ in range(STEPS):
        result = grpo_update(trained, optimizer, scheduler, SEQUENCES[:count], config, 0, ctx)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        steps.append({"weights": weights, "loss": result.loss, "grad_norm": result.grad_norm,
                      "kl_to_ref": result.kl_to_ref, "tokens": result.tokens})  # fmt: skip
    return steps


def rank_worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        ctx = DistContext(rank, world, rank)
        torch.save([train_case(case, ctx) for case in CASES], Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[list[list[dict[str, Any]]]]:
    """Every case trained by two gloo ranks: [rank][case][step]."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(rank_worker, args=(2, str(out / "store"), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-kl{c[1]}-m{c[2]}-n{c[3]}"
                                                          for c in CASES])  # fmt: skip
def test_two_ranks_update_as_one_process_on_the_same_sequences(
    two_ranks: list[list[list[dict[str, Any]]]], index: int
) -> None:
    single = train_case(CASES[index], SINGLE)
    start = TinyLM().state_dict()
    assert any(not torch.equal(single[0]["weights"][k], start[k]) for k in start)  # it moved
    for rank in range(2):
        for step in range(STEPS):
            mine, one = two_ranks[rank][index][step], single[step]
            for key, value in one["weights"].items():
                torch.testing.assert_close(mine["weights"][key], value, atol=1e-6, rtol=1e-5)
            assert_same_step_figures(mine, one)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_both_ranks_end_every_step_with_identical_weights(
    two_ranks: list[list[list[dict[str, Any]]]],
) -> None:
    for index in range(len(CASES)):
        for step in range(STEPS):
            zero, one = (two_ranks[r][index][step]["weights"] for r in range(2))
            assert all(torch.equal(zero[k], one[k]) for k in zero), (CASES[index], step)


def test_each_rank_takes_every_world_size_th_item() -> None:
    items = list(range(7))
    shares = [shard(items, DistContext(r, 3, r)) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard(items, SINGLE) == items


def test_the_launchers_variables_place_the_rank() -> None:
    assert env_context({}) is None  # started alone
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h"}
    assert env_context(torchrun) == DistContext(3, 4, 1)
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "h"}
    assert env_context(srun) == DistContext(5, 8, 1)
    assert env_context({k: v for k, v in srun.items() if k != "MASTER_ADDR"}) is None
    with pytest.raises(ConfigError, match="RANK=4 is not a rank of WORLD_SIZE=4"):
        env_context({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="not integers"):
        env_context({"RANK": "x", "WORLD_SIZE": "2"})


def test_a_process_started_alone_is_a_single_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.distributed import init_from_env

    for name in ("WORLD_SIZE", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert init_from_env("cpu", 60) == SINGLE
    assert not dist.is_initialized()
    assert os.environ.get("WORLD_SIZE") is None


def dying_worker(rank: int, world: int, store: str, out: str) -> None:
    """Rank 1 dies between two collectives; rank 0 records how its next one ended."""
    from datetime import timedelta

    from trainer.distributed import gather

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    ctx = DistContext(rank, world, rank)
    gather("ready", ctx, "a first gather")
    if rank == 1:
        os._exit(1)  # no goodbye: what a crash or an OOM kill looks like to the peers
    started = time.monotonic()
    try:
        gather("more", ctx, "the rollouts of step-00002.jsonl")
        outcome = "no error"
    except TrainingStopped as exc:
        outcome = str(exc)
    Path(out, "outcome").write_text(f"{time.monotonic() - started:.1f}\n{outcome}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_rank_that_dies_without_a_launcher_stops_the_other_in_one_line(tmp_path: Path) -> None:
    """Plain `srun` has no agent to stop the survivors: the collective itself must fail, as a
    one-line TrainingStopped, well before the process group's timeout (60 s here)."""
    context = mp.get_context("spawn")
    store = str(tmp_path / "store")
    ranks = [context.Process(target=dying_worker, args=(r, 2, store, str(tmp_path)))
             for r in range(2)]  # fmt: skip
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=90)
    assert not any(p.is_alive() for p in ranks)
    waited, outcome = (tmp_path / "outcome").read_text().split("\n", 1)
    assert outcome.startswith("rank 0: the rollouts of step-00002.jsonl failed: another rank")
    assert "\n" not in outcome
    assert float(waited) < 30


def write_config(tmp_path: Path) -> Path:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "a", "prompt": "p", "reference_answer": "1"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(f"base_model: m\ntrain_dataset: {rows}\noutput_dir: {tmp_path / 'run'}\n")
    return config


def test_nproc_per_node_under_a_launcher_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    config = write_config(tmp_path)
    assert main(["train", "--config", str(config), "--nproc-per-node", "2"]) == 2
    assert "started by a launcher (WORLD_SIZE is set)" in capsys.readouterr().err


def test_resuming_with_another_world_size_is_refused_before_any_rank_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.checkpoint import TrainState, save_checkpoint
    from trainer.cli import main

    config = write_config(tmp_path)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    state = TrainState(step=3, version="v0003", base_model="m", seed=0, world_size=1)
    save_checkpoint(tmp_path / "run", state, optimizer, scheduler)
    argv = ["train", "--config", str(config), "--resume", "--nproc-per-node", "2"]
    assert main(argv) == 2  # no launcher started: it would have failed to load model "m"
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "trained by 1 process(es), not 2: resume with --nproc-per-node 1" in line
