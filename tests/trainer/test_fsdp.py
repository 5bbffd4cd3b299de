"""`data_parallel: fsdp` on CPU (gloo, 2 processes, torch's FSDP2) over a tiny PEFT Qwen2 model.

Two ranks hold half of every weight each. After every optimizer step the gathered adapter must
equal the single-process update over all the sequences (as DDP's must, test_distributed.py);
the adapter rank 0 saves after a step must equal the one DDP saves; and a run resumed from its
checkpoint (adapter plus the optimizer state gathered from the shards) must take the same next
step as the run that went on. Which assertion fails when something is wrong:
- no reduce-scatter, or no world-size factor in the shares: the weights differ from one process;
- rank 0 saves its own shard instead of the gathered weights: the saved adapter's shapes differ
  from DDP's (half the rows) and PEFT cannot load it;
- the optimizer state not restored on resume: AdamW's second step differs (the control run,
  which resumes with a fresh optimizer, shows by how much).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from rankkit import assert_same_step_figures
from trainer.batch import TrainSequence
from trainer.checkpoint import TrainState, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig, load_config
from trainer.distributed import (
    SINGLE,
    DistContext,
    load_optimizer_state,
    optimizer_state,
    save_from_main,
    trainable,
    unwrap,
    wrap_model,
)
from trainer.errors import CheckpointError, ConfigError
from trainer.update import grpo_update, micro_batches

# (loss_type, kl_coef, micro_batch_size, sequences used): several micro-batches per rank,
# token-weighted dapo with the reference pass (adapter disabled, through the sharded model),
# uneven shares in one micro-batch each, a rank left with no sequence, and (last) ranks with
# different micro-batch counts (3 and 2)
CASES = [("grpo", 0.0, 1, 4), ("dapo", 0.1, 2, 4), ("dr_grpo", 0.0, 4, 5), ("grpo", 0.0, 1, 1),
         ("grpo", 0.1, 1, 5)]  # fmt: skip
STEPS = 2
SEQUENCES = [
    TrainSequence([1, 2, 3, 4, 5], [0, 0, 1, 1, 1], [-2.0] * 5, 0.5),
    TrainSequence([1, 6, 7], [0, 1, 1], [-2.5] * 3, -0.5),
    TrainSequence([2, 3, 9, 9, 9, 9, 4], [0, 0, 1, 1, 1, 1, 1], [-3.0] * 7, 1.0),
    TrainSequence([5, 4, 3, 2, 1, 0, 8, 8], [0, 1, 1, 1, 1, 1, 1, 1], [-2.0] * 8, -1.0),
    TrainSequence([7, 7], [0, 1], [-1.0] * 2, 0.25),
]


def case_config(case: tuple[str, float, int, int], **extra: Any) -> TrainConfig:
    loss_type, kl_coef, micro, _ = case
    return TrainConfig.model_validate(
        {"base_model": "m", "loss_type": loss_type, "kl_coef": kl_coef,
         "micro_batch_size": micro, "max_grad_norm": 1e9, **extra}
    )  # fmt: skip


def equal_micro_batch_counts(case: tuple[str, float, int, int], world: int = 2) -> bool:
    """Whether every rank runs as many forwards: under FSDP each one is a collective."""
    config, count = case_config(case), case[3]
    counts = {len(micro_batches(SEQUENCES[:count], config, 0, DistContext(r, world, r)))
              for r in range(world)}  # fmt: skip
    return len(counts) == 1


def peft_model(model_dir: str, dtype: torch.dtype | None = None) -> Any:
    """The same LoRA model in every process: seeded, lora_B non-zero so both factors move."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base, lora_settings())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def lora_settings() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def full_adapter(model: Any, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The whole LoRA weights on rank 0 (gathered from the shards under FSDP)."""
    from trainer.fsdp import gathered_adapter, is_sharded

    inner = unwrap(model)
    if is_sharded(inner):
        return gathered_adapter(inner, ctx)
    return {n: p.detach().clone() for n, p in inner.named_parameters() if p.requires_grad}


def train_case(
    case: tuple[str, float, int, int],
    ctx: DistContext,
    model_dir: str,
    mode: str = "fsdp",
    checkpointing: bool = False,
) -> list[dict[str, Any]]:
    """STEPS plain-SGD updates (a scale error shows) -> per step: weights (rank 0), figures."""
    from trainer.train import checkpointed

    config = case_config(case, gradient_checkpointing=checkpointing)
    model = checkpointed(peft_model(model_dir), config)  # as load_trainable makes it
    trained = wrap_model(model, ctx, mode)
    optimizer = torch.optim.SGD(trainable(trained), lr=0.5)  # over the shards, once sharded
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    steps = []
    for _ in range(STEPS):
        result = grpo_update(trained, optimizer, scheduler, SEQUENCES[: case[3]], config, 0, ctx)
        steps.append({"weights": full_adapter(trained, ctx), "loss": result.loss,
                      "grad_norm": result.grad_norm, "kl_to_ref": result.kl_to_ref,
                      "tokens": result.tokens})  # fmt: skip
    return steps


def layout(model_dir: str, ctx: DistContext) -> dict[str, tuple[str, bool, int, int]]:
    """Per weight of a bfloat16 model once sharded: (dtype, trainable, local rows, rows)."""
    from torch.distributed.tensor import DTensor

    model = wrap_model(peft_model(model_dir, torch.bfloat16), ctx, "fsdp")
    facts = {}
    for name, param in unwrap(model).named_parameters():
        local = param.to_local() if isinstance(param, DTensor) else param
        facts[name] = (str(param.dtype), param.requires_grad, local.shape[0], param.shape[0])
    return facts


def step_and_save(model_dir: str, ctx: DistContext, mode: str, out: Path) -> None:
    """One step of the first case, then the adapter saved as rank 0 saves it in a run."""
    config = case_config(CASES[0])
    model = peft_model(model_dir)
    trained = wrap_model(model, ctx, mode)
    optimizer = torch.optim.SGD(trainable(trained), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    grpo_update(trained, optimizer, scheduler, SEQUENCES[:4], config, 0, ctx)
    save_from_main(model, out, "v0001", ctx)


def resume_check(model_dir: str, ctx: DistContext, out: Path) -> dict[str, Any]:
    """AdamW: step 1, checkpoint, step 2 (the run going on); then from the checkpoint, step 2
    again with the optimizer state restored (resumed) and without it (the control)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.train import make_optimizer

    config = case_config(CASES[0], learning_rate=1e-2, warmup_steps=3)
    run = out / "run"
    model = peft_model(model_dir)
    trained = wrap_model(model, ctx, "fsdp")
    optimizer, scheduler = make_optimizer(model, config)
    grpo_update(trained, optimizer, scheduler, SEQUENCES[:4], config, 0, ctx)
    save_from_main(model, run / "adapters", "v0001", ctx)
    gathered = optimizer_state(model, optimizer, ctx)
    if ctx.is_main:
        state = TrainState(step=1, version="v0001", base_model="m", seed=0, world_size=2,
                           data_parallel="fsdp")  # fmt: skip
        save_checkpoint(run, state, optimizer, scheduler, gathered)
    dist.barrier()
    grpo_update(trained, optimizer, scheduler, SEQUENCES[:4], config, 0, ctx)
    outcome: dict[str, Any] = {"went_on": full_adapter(trained, ctx)}
    for name, restore in (("resumed", True), ("control", False)):
        _, tensors = load_checkpoint(run, "m", 2, "fsdp")
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        again = PeftModel.from_pretrained(base, run / "adapters" / "v0001", is_trainable=True)
        wrapped = wrap_model(again, ctx, "fsdp")
        optimizer, scheduler = make_optimizer(again, config)
        if restore:
            load_optimizer_state(again, optimizer, tensors["optimizer"])
            scheduler.load_state_dict(tensors["scheduler"])
        grpo_update(wrapped, optimizer, scheduler, SEQUENCES[:4], config, 0, ctx)
        outcome[name] = full_adapter(wrapped, ctx)
    return outcome


def rank_worker(rank: int, world: int, store: str, out: str, model_dir: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        ctx = DistContext(rank, world, rank)
        # a case whose ranks run different forward counts would hang FSDP: not run then
        # (test_every_rank_runs_as_many_micro_batches fails instead)
        cases = [train_case(c, ctx, model_dir) if equal_micro_batch_counts(c) else None
                 for c in CASES]  # fmt: skip
        for mode in ("ddp", "fsdp"):
            step_and_save(model_dir, ctx, mode, Path(out) / mode)
        results = {"cases": cases, "layout": layout(model_dir, ctx),
                   "checkpointing": train_case(CASES[1], ctx, model_dir, checkpointing=True),
                   "resume": resume_check(model_dir, ctx, Path(out))}  # fmt: skip
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tiny_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every check run by two gloo ranks -> {"ranks": [rank 0's, rank 1's], "out": dir}."""
    out = tmp_path_factory.mktemp("fsdp")
    args = (2, str(out / "store"), str(out), str(tiny_policy_dir))
    mp.spawn(rank_worker, args=args, nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"ranks": ranks, "out": out}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-kl{c[1]}-m{c[2]}-n{c[3]}"
                                                          for c in CASES])  # fmt: skip
def test_two_sharded_ranks_update_as_one_process_on_the_same_sequences(
    two_ranks: dict[str, Any], tiny_policy_dir: Path, index: int
) -> None:
    sharded = [two_ranks["ranks"][r]["cases"][index] for r in range(2)]
    if sharded[0] is None:
        pytest.fail("not run: the ranks' micro-batch counts differ (see the test below)")
    single = train_case(CASES[index], SINGLE, str(tiny_policy_dir))
    start = full_adapter(peft_model(str(tiny_policy_dir)), SINGLE)
    assert any(not torch.equal(single[0]["weights"][k], start[k]) for k in start)  # it moved
    for step in range(STEPS):
        one = single[step]
        gathered = sharded[0][step]["weights"]  # rank 0's: the whole adapter
        assert gathered.keys() == one["weights"].keys()
        for key, value in one["weights"].items():
            torch.testing.assert_close(gathered[key], value, atol=1e-6, rtol=1e-5)
        for rank in range(2):  # every rank reports the whole step's figures
            mine = sharded[rank][step]
            assert_same_step_figures(mine, one)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sharded_layers_under_gradient_checkpointing_update_as_one_process(
    two_ranks: dict[str, Any], tiny_policy_dir: Path
) -> None:
    """The recomputed forward in backward all-gathers each layer again: still the same step."""
    single = train_case(CASES[1], SINGLE, str(tiny_policy_dir), checkpointing=True)
    sharded = two_ranks["ranks"][0]["checkpointing"]
    for step in range(STEPS):
        for key, value in single[step]["weights"].items():
            torch.testing.assert_close(sharded[step]["weights"][key], value, atol=1e-6, rtol=1e-5)
        assert sharded[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-5, abs=1e-7)


def test_every_rank_runs_as_many_micro_batches_as_the_others() -> None:
    """Under FSDP every forward all-gathers weights: a rank with fewer micro-batches would
    leave the others waiting in a collective (a hang, then a timeout)."""
    for case in CASES:
        assert equal_micro_batch_counts(case), case


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_each_rank_holds_half_of_every_weight_in_its_dtype(two_ranks: dict[str, Any]) -> None:
    facts = [two_ranks["ranks"][r]["layout"] for r in range(2)]
    assert facts[0].keys() == facts[1].keys()
    for name, (dtype, trains, local, rows) in facts[0].items():
        assert local + facts[1][name][2] == rows, name  # the two shards make the whole
        assert local == -(-rows // 2), name  # rank 0 holds the first half (rounded up)
        assert trains == ("lora_" in name), name
        # the frozen base as loaded (bfloat16), the adapter as PEFT keeps it (float32)
        assert dtype == ("torch.float32" if trains else "torch.bfloat16"), name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_adapter_saved_after_a_step_equals_ddps(two_ranks: dict[str, Any]) -> None:
    """The whole LoRA weights, by PEFT's names (the resume test loads such an adapter)."""
    out = two_ranks["out"]
    ddp, fsdp = (
        load_file(out / m / "v0001" / "adapter_model.safetensors") for m in ("ddp", "fsdp")
    )
    assert fsdp.keys() == ddp.keys() and ddp
    for key, value in ddp.items():
        torch.testing.assert_close(fsdp[key], value, atol=1e-6, rtol=1e-5)
    assert (out / "fsdp" / "v0001" / "adapter_config.json").read_text() == (
        out / "ddp" / "v0001" / "adapter_config.json"
    ).read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_resumed_sharded_run_takes_the_same_next_step(two_ranks: dict[str, Any]) -> None:
    outcome = two_ranks["ranks"][0]["resume"]
    went_on, resumed, control = outcome["went_on"], outcome["resumed"], outcome["control"]
    assert went_on.keys() == resumed.keys() and went_on
    for key, value in went_on.items():
        torch.testing.assert_close(resumed[key], value, atol=1e-6, rtol=1e-5)
    # without the optimizer state the step differs: the comparison above can fail
    assert any(not torch.allclose(control[k], went_on[k], atol=1e-5) for k in went_on)


def test_fsdp_with_the_in_process_policy_is_refused_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("base_model: m\ndata_parallel: fsdp\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    message = str(info.value)
    assert "data_parallel: fsdp shards the model" in message
    assert "use policy.backend: vllm, or data_parallel: ddp" in message
    assert "\n" not in message
    served = ["policy.backend=vllm", "policy.base_urls=[http://127.0.0.1:8000/v1]"]
    assert load_config(config, served).data_parallel == "fsdp"
    assert load_config(config, ["data_parallel=ddp"]).data_parallel == "ddp"
    with pytest.raises(ConfigError, match="data_parallel: Input should be 'ddp' or 'fsdp'"):
        load_config(config, ["data_parallel=zero3"])


def saved_run(tmp_path: Path, data_parallel: Literal["ddp", "fsdp"], world_size: int) -> Path:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    state = TrainState(step=3, version="v0003", base_model="m", seed=0, world_size=world_size,
                       data_parallel=data_parallel)  # fmt: skip
    save_checkpoint(tmp_path / "run", state, optimizer, scheduler)
    return tmp_path / "run"


@pytest.mark.parametrize(("saved", "asked"), [("ddp", "fsdp"), ("fsdp", "ddp")])
def test_resuming_as_the_other_data_parallel_is_refused_in_one_line(
    tmp_path: Path, saved: Literal["ddp", "fsdp"], asked: str
) -> None:
    run = saved_run(tmp_path, saved, 2)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(run, "m", 2, asked)
    line = str(info.value)
    assert f"trained with data_parallel: {saved}, not {asked}" in line
    assert f"--set data_parallel={saved}" in line and "\n" not in line
    load_checkpoint(run, "m", 2, saved)  # the same one resumes


def test_a_single_process_checkpoint_resumes_either_way(tmp_path: Path) -> None:
    """One process saves a plain optimizer state whatever data_parallel says."""
    run = saved_run(tmp_path, "fsdp", 1)
    state, _ = load_checkpoint(run, "m", 1, "ddp")
    assert state.data_parallel == "fsdp"


def test_a_checkpoint_from_before_the_key_is_ddp(tmp_path: Path) -> None:
    run = saved_run(tmp_path, "ddp", 2)
    state_file = run / "checkpoint" / "state.json"
    state_file.write_text(state_file.read_text().replace('"data_parallel": "ddp"', '"x": 0'))
    with pytest.raises(CheckpointError, match="data_parallel: ddp, not fsdp"):
        load_checkpoint(run, "m", 2, "fsdp")


def test_resuming_as_fsdp_is_refused_before_any_rank_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.cli import main

    saved_run(tmp_path, "ddp", 2)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "a", "prompt": "p", "reference_answer": "1"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(
        f"base_model: m\ntrain_dataset: {rows}\noutput_dir: {tmp_path / 'run'}\n"
        "data_parallel: fsdp\npolicy: {backend: vllm, base_urls: [http://127.0.0.1:9/v1]}\n"
    )
    argv = ["train", "--config", str(config), "--resume", "--nproc-per-node", "2"]
    assert main(argv) == 2  # no launcher started: it would have failed to load model "m"
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "trained with data_parallel: ddp, not fsdp" in line
