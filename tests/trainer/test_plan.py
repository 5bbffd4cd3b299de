"""`toolgym plan`'s arithmetic against the real thing: parameter counts of models built here,
PEFT's trainable count, the bytes autograd keeps during the trainer's own forward (measured with
saved_tensors_hooks), and published figures of known models; then the CLI's answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import yaml

from trainer.cli import main
from trainer.plan import GIB, Hardware, Workload, trainer_side
from trainer.plan_changes import make_plan
from trainer.plan_cli import parse_size
from trainer.plan_model import (
    ModelShape,
    activation_bytes,
    kv_bytes_per_token,
    layer_parameter_count,
    logits_bytes,
    lora_parameter_count,
    parameter_count,
    root_parameter_count,
    shape_from_config,
)

FIXTURES = Path(__file__).parent / "plan_fixtures"
ROOT = Path(__file__).resolve().parents[2]
TOOLGYM = str(Path(sys.executable).with_name("toolgym"))
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def config_of(kind: str, **values: Any) -> Any:
    from transformers import AutoConfig

    return AutoConfig.for_model(kind, **values)


TINY = {"hidden_size": 32, "intermediate_size": 88, "num_hidden_layers": 2, "vocab_size": 300}
MHA = {"num_attention_heads": 4, "num_key_value_heads": 4}
GQA = {"num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("qwen2", {**TINY, **MHA, "tie_word_embeddings": True}),
        ("qwen2", {**TINY, **MHA, "tie_word_embeddings": False}),
        ("qwen2", {**TINY, "num_attention_heads": 8, "num_key_value_heads": 2}),  # GQA
        ("llama", {**TINY, **GQA, "attention_bias": True, "mlp_bias": True}),
        ("qwen3", {**TINY, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}),
        ("mistral", {**TINY, "num_attention_heads": 4, "num_key_value_heads": 1}),
    ],
)  # fmt: skip
def test_parameter_count_is_exact(kind: str, values: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    config = config_of(kind, **values)
    model = AutoModelForCausalLM.from_config(config)
    assert parameter_count(shape_from_config(config)) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("rank", "targets"),
    [(8, ["q_proj", "v_proj"]), (4, ALL_LINEAR), (16, ["o_proj", "down_proj", "embed_tokens"])],
)
def test_lora_count_is_pefts(rank: int, targets: list[str]) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    values = {**TINY, "num_attention_heads": 8, "num_key_value_heads": 2}
    config = config_of("qwen2", **values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            AutoModelForCausalLM.from_config(config), LoraConfig(r=rank, target_modules=targets)
        )
    trainable, _ = model.get_nb_trainable_parameters()
    assert lora_parameter_count(shape_from_config(config), rank, targets) == trainable


# ---- activations: measured during the trainer's forward, against the estimate ----


def saved_bytes(model: Any, batch: Any) -> int:
    """Bytes autograd keeps for backward over the trainer's forward and loss (trainer/update.py
    `accumulate`'s calls): unique storages, the model's own weights left out."""
    from trainer.loss import policy_loss
    from trainer.update import forward_logprobs

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logprobs, _ = forward_logprobs(model, batch, 1.0)
        loss, _ = policy_loss(logprobs, batch.behaviour, batch.advantages, batch.mask)
    loss.backward()  # what was kept is what backward uses: it must run
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    return sum(storages.values())


def trainer_model(model_dir: Path, rank: int, targets: list[str], checkpointing: bool) -> Any:
    """The model as the trainer loads it (`load_trainable`)."""
    from trainer.config import TrainConfig
    from trainer.train import load_trainable

    config = TrainConfig.model_validate({
        "base_model": str(model_dir),
        "policy": {"backend": "local", "device": "cpu"},
        "lora": {"rank": rank, "alpha": 2 * rank, "target_modules": targets},
        "gradient_checkpointing": checkpointing,
    })  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = load_trainable(config, None)
    return model


def padded_batch(lengths: list[int], vocab: int) -> Any:
    from trainer.batch import TrainSequence, collate

    generator = torch.Generator().manual_seed(0)
    sequences = []
    for length in lengths:
        ids = torch.randint(1, vocab, (length,), generator=generator).tolist()
        mask = [0] * 8 + [1] * (length - 8)
        sequences.append(TrainSequence(ids, mask, [-1.0] * length, 0.5))
    return collate(sequences, 0)


@pytest.fixture(scope="module")
def bf16_gqa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-bit GQA model with a realistic MLP width (intermediate ~5.4 x hidden, as Qwen2.5's)."""
    from transformers import AutoModelForCausalLM

    config = config_of(
        "qwen2", hidden_size=64, intermediate_size=344, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
        tie_word_embeddings=False, dtype="bfloat16",
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    out = tmp_path_factory.mktemp("bf16_gqa")
    model.save_pretrained(out)
    return out


# Term by term, the estimates land within 1.5% (transformers 5.23, peft 0.21, torch 2.13); 5%
# leaves room for small library changes and still catches one missing term (a third MLP
# tensor is 7-13% here)
TOLERANCE = 0.05


def assert_close(what: str, measured: int, estimate: int) -> None:
    gap = estimate / measured - 1
    print(f"\n{what}: measured {measured:,} B, estimated {estimate:,} B ({gap:+.1%})")  # -s
    assert abs(gap) <= TOLERANCE, f"{what}: the estimate is {gap:+.1%} off"


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize(
    ("which", "rank", "targets", "lengths"),
    [
        ("tiny", 8, ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"], [192, 160]),
        ("bf16", 16, ALL_LINEAR, [256, 200]),
        ("bf16", 8, ["q_proj", "v_proj"], [256]),  # one sequence: no padding mask
    ],
)
def test_saved_activations_match_the_estimate(
    which: str,
    rank: int,
    targets: list[str],
    lengths: list[int],
    checkpointing: bool,
    tiny_policy_dir: Path,
    bf16_gqa_dir: Path,
) -> None:
    from transformers import AutoConfig

    model_dir = tiny_policy_dir if which == "tiny" else bf16_gqa_dir
    shape = shape_from_config(AutoConfig.from_pretrained(model_dir))
    model = trainer_model(model_dir, rank, targets, checkpointing)
    # the dtypes the plan assumes: the checkpoint's for the base, float32 for LoRA
    base = model.get_base_model().get_input_embeddings().weight
    assert base.dtype == getattr(torch, shape.dtype)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}

    batch = padded_batch(lengths, shape.vocab_size)
    measured = saved_bytes(model, batch)
    b, s = len(lengths), max(lengths)
    act = activation_bytes(shape, rank, targets, b, s, checkpointing)
    _, logits_saved = logits_bytes(shape, b, s)
    estimate = act.saved + act.masks + logits_saved
    what = f"{which} {shape.dtype} r{rank} x{len(targets)} b{b} s{s} gc={checkpointing}"
    assert_close(what, measured, estimate)


# ---- published figures ----

# Values from the models' published config.json files (huggingface.co/<id>/blob/main/config.json)
# and parameter counts from their model cards: Qwen2.5-7B "7.61B, non-embedding 6.53B";
# Qwen2.5-3B "3.09B, non-embedding 2.77B"; Meta-Llama-3-8B "8B" (8,030,261,248 on the hub's
# safetensors index). Computed: 7,615,616,512 / 3,085,938,688 / 8,030,261,248.
QWEN25_7B = {
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}  # fmt: skip
LLAMA3_8B = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}  # fmt: skip


def fixture_shape(name: str) -> ModelShape:
    data = json.loads((FIXTURES / name).read_text())
    data.pop("_comment")
    return shape_from_config(config_of(data.pop("model_type"), **data))


@pytest.mark.parametrize(
    ("shape", "parameters", "non_embedding", "kv_per_token"),
    [
        (lambda: shape_from_config(config_of("qwen2", **QWEN25_7B)), 7.61e9, 6.53e9, 57_344),
        (lambda: shape_from_config(config_of("llama", **LLAMA3_8B)), 8.03e9, None, 131_072),
        (lambda: fixture_shape("qwen2.5-3b-instruct.json"), 3.09e9, 2.77e9, 36_864),
    ],
)
def test_published_figures(
    shape: Any, parameters: float, non_embedding: float | None, kv_per_token: int
) -> None:
    model: ModelShape = shape()
    count = parameter_count(model)
    assert abs(count - parameters) < 0.01e9, count  # the cards round to 10M
    if non_embedding is not None:
        embeddings = model.vocab_size * model.hidden_size * (1 if model.tied_embeddings else 2)
        assert abs(count - embeddings - non_embedding) < 0.01e9
    # K and V x layers x kv heads x head_dim x 2 bytes (bf16), e.g. 2 x 28 x 4 x 128 x 2
    assert kv_bytes_per_token(model) == kv_per_token
    assert kv_bytes_per_token(model, tensor_parallel=2) == kv_per_token // 2


# ---- the CLI ----


def toolgym(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    ("text", "size"),
    [("80GiB", 80 * 1024**3), ("80GB", 80 * 10**9), ("141G", 141 * 10**9),
     ("1.5TiB", 1.5 * 1024**4), ("96 Gi", 96 * 1024**3), ("512MiB", 512 * 1024**2), ("1000", 1000)],
)  # fmt: skip
def test_sizes(text: str, size: float) -> None:
    assert parse_size(text) == size


GPU_CONFIG = str(ROOT / "configs" / "gpu-qwen2.5-3b.yaml")
QWEN_3B = str(FIXTURES / "qwen2.5-3b-instruct.json")


def test_cli_plans_the_gpu_config(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--config", GPU_CONFIG, "--model-config", QWEN_3B, "--gpu-memory", "80GiB"]
    status, out, _ = toolgym([*argv, "--json"], capsys)
    plan = json.loads(out)
    assert status == 0 and plan["fits"] is True and plan["changes"] == []
    assert plan["workload"]["gradient_checkpointing"] is True  # read from the config
    assert plan["trainer"]["total"] <= plan["trainer"]["available"] == 80 * 1024**3
    assert {item["name"] for item in plan["vllm"]["items"]} >= {"weights", "KV cache"}
    status, out, _ = toolgym([*argv, "--set", "gradient_checkpointing=false"], capsys)
    assert status == 0 and "DOES NOT FIT" in out
    assert "3,085,938,688 parameters" in out and "KV cache" in out
    assert "what to change:\n  - gradient_checkpointing: true: " in out


def test_cli_local_model_without_vllm(
    tiny_policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.yaml"
    local = {"base_model": str(tiny_policy_dir), "policy": {"backend": "local", "device": "cpu"}}
    config.write_text(yaml.safe_dump(local))
    status, out, _ = toolgym(["plan", "--config", str(config), "--gpu-memory", "141G"], capsys)
    assert status == 0 and "no vLLM side" in out and "verdict: fits" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--gpu-memory", "80 gigs"], "is no size"),
        (["--gpu-memory", "80iB"], "is no size"),
        (["--model-config", "/nonexistent/config.json"], "--model-config"),
        (["--set", "lora.target_modules=[qkv]"], "is no module"),
    ],
)
def test_cli_bad_input_is_one_line(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["plan", "--config", GPU_CONFIG, "--model-config", QWEN_3B, *args]
    status, _, err = toolgym(argv, capsys)
    assert status == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_cli_other_families_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpt2 = tmp_path / "config.json"
    gpt2.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 2}))
    argv = ["plan", "--config", GPU_CONFIG, "--model-config", str(tmp_path)]
    status, _, err = toolgym(argv, capsys)
    assert status == 2 and "model_type gpt2: only llama" in err, err


def test_cli_missing_config_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = toolgym(["plan", "--config", "/nonexistent/run.yaml"], capsys)
    assert status == 2 and "cannot read" in err and len(err.strip().splitlines()) == 1


def test_cli_hub_id_offline_is_one_line() -> None:
    result = subprocess.run(
        [TOOLGYM, "plan", "--config", GPU_CONFIG],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "needs the network" in result.stderr and "--model-config" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def peak_bytes(model: Any, batch: Any, out: Path, forward: Any = None) -> int:
    """The most memory the trainer's forward, loss and backward hold at once above what was
    held before (weights, the batch), from the profiler's allocation timeline on the CPU.
    `forward`: another forward_logprobs to measure (test_memory_levers' plain one)."""
    from torch.profiler import ProfilerActivity, profile

    from trainer.loss import policy_loss
    from trainer.update import forward_logprobs

    model.train()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:  # fmt: skip
        logprobs, _ = (forward or forward_logprobs)(model, batch, 1.0)
        loss, _ = policy_loss(logprobs, batch.behaviour, batch.advantages, batch.mask)
        loss.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA snapshots only
        prof.export_memory_timeline(str(out), device="cpu")
    _, sizes = json.loads(out.read_text())
    totals = [sum(row) for row in sizes]
    return max(totals) - totals[0]


@pytest.mark.parametrize(
    ("vocab", "targets", "lengths"),
    [
        (32768, ["q_proj", "v_proj"], [512]),
        (131072, ["q_proj", "v_proj"], [512]),  # 128 positions a chunk: four chunks
        (1024, ALL_LINEAR, [256, 200]),
    ],
)
def test_peak_matches_the_summed_items(
    vocab: int, targets: list[str], lengths: list[int], tmp_path: Path
) -> None:
    """The logits' peak (2 x dtype bytes per token and vocabulary entry, and the float32
    chunks' work) is no saved tensor: measure it. A large vocabulary makes the logits the
    biggest item, as in real models."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = config_of(
        "qwen2", hidden_size=64, intermediate_size=344, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, dtype="bfloat16",
    )  # fmt: skip
    shape = shape_from_config(config)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
        model = get_peft_model(base, LoraConfig(r=8, target_modules=targets))
    batch = padded_batch(lengths, vocab)
    measured = peak_bytes(model, batch, tmp_path / "timeline.json")
    b, s = len(lengths), max(lengths)
    act = activation_bytes(shape, 8, targets, b, s, checkpointing=False)
    logits_peak, _ = logits_bytes(shape, b, s)
    grads = 4 * lora_parameter_count(shape, 8, targets)
    estimate = act.saved + act.masks + logits_peak + grads
    assert_close(f"peak V{vocab} b{b} s{s}", measured, estimate)


# ---- data_parallel: fsdp ----


def test_layer_and_root_counts_are_the_models() -> None:
    """FSDP's units as trainer/fsdp.py makes them: one per decoder layer, the rest the root."""
    from transformers import AutoModelForCausalLM

    for tied in (True, False):
        config = config_of("qwen2", **TINY, **GQA, tie_word_embeddings=tied)
        model = AutoModelForCausalLM.from_config(config)
        shape = shape_from_config(config)
        layer = sum(p.numel() for p in model.model.layers[0].parameters())
        in_layers = {id(p) for p in model.model.layers.parameters()}
        root = sum(p.numel() for p in model.parameters() if id(p) not in in_layers)
        assert (layer_parameter_count(shape), root_parameter_count(shape)) == (layer, root)


def tiny_work(**values: Any) -> Workload:
    return Workload(**{
        "micro_batch_size": 2, "max_sequence_tokens": 256, "lora_rank": 8,
        "lora_targets": tuple(ALL_LINEAR), "kl_coef": 0.0, "concurrency": 8, "servers": 1,
        "group_size": 4, **values,
    })  # fmt: skip


@pytest.mark.parametrize("gpus", [2, 4])
def test_fsdp_items_are_the_formula(gpus: int) -> None:
    """Per GPU: W / N + the root in full + two decoder layers in full; the LoRA state / N;
    no DDP buckets; activations and logits as each ddp rank's."""
    config = config_of("qwen2", **TINY, **GQA, tie_word_embeddings=False, dtype="bfloat16")
    shape = shape_from_config(config)
    work, hw = tiny_work(data_parallel="fsdp"), Hardware(gpus=gpus, gpu_memory=GIB)
    items = {i.name: i.bytes for i in trainer_side(shape, work, hw).items}
    ddp = {i.name: i.bytes for i in trainer_side(shape, tiny_work(), hw).items}
    d, n = 2, gpus
    # hand-counted: q 32x32, k/v 32x16, o 32x32, gate/up/down 32x88, biases q 32 + k/v 16, norms
    layer = 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 88 + (32 + 2 * 16) + 2 * 32
    root = 2 * 300 * 32 + 32  # embeddings, lm_head (untied), final norm
    lora_layer = 8 * ((32 + 32) * 2 + (32 + 16) * 2 + (32 + 88) * 3)
    weights, lora = (2 * layer + root) * d, 2 * lora_layer
    assert items["base weights"] == -(-weights // n)
    assert items["unsharded root"] == root * d
    assert items["gathered layers"] == 2 * (layer * d + lora_layer * 4)
    assert items["LoRA weights"] == items["LoRA grads"] == -(-lora * 4 // n)
    assert items["AdamW moments"] == -(-lora * 8 // n)
    assert "DDP grad buckets" not in items and "DDP grad buckets" in ddp
    for name in ("activations", "attention masks", "logits"):
        assert items[name] == ddp[name] > 0
    # one process alone is never wrapped: fsdp then plans a replica
    single = trainer_side(shape, work, Hardware(gpus=1, gpu_memory=GIB))
    assert single.items[0].bytes == weights and "shards nothing" in single.notes[0]


def fsdp_worker(rank: int, world: int, store: str, out: str, model_dir: str) -> None:
    """trainer/fsdp.py's sharding of a bfloat16 PEFT model -> this rank's parameter bytes:
    resident at rest (the local shards), and held in full after one forward (unsharded)."""
    from test_fsdp import peft_model
    from torch.distributed.tensor import DTensor

    from trainer.distributed import DistContext, unwrap, wrap_model

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = wrap_model(peft_model(model_dir, torch.bfloat16), DistContext(rank, world, rank),
                           "fsdp")  # fmt: skip

        def held() -> dict[str, int]:
            figures = {"shards": 0, "full": 0, "full_in_layers": 0}
            for name, param in unwrap(model).named_parameters():
                if isinstance(param, DTensor):
                    figures["shards"] += param.to_local().nbytes
                else:  # gathered and not resharded
                    figures["full"] += param.nbytes
                    figures["full_in_layers"] += param.nbytes * (".layers." in name)
            return figures

        at_rest = held()
        model(input_ids=torch.tensor([[1, 2, 3, 4, 5, 6]]))  # grad on, as the update runs it
        torch.save({"at_rest": at_rest, "after_forward": held()}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_shards_and_root_as_measured(tiny_policy_dir: Path, tmp_path: Path) -> None:
    """The real wrapping (trainer/fsdp.py) on 2 gloo ranks: each rank's local shards against
    the estimate's sharded weights (base / N + LoRA / N); after a forward the root alone
    stays gathered (FSDP2 does not reshard it) and every layer is sharded again."""
    import torch.multiprocessing as mp
    from test_fsdp import lora_settings
    from transformers import AutoConfig

    mp.spawn(fsdp_worker, args=(2, str(tmp_path / "store"), str(tmp_path), str(tiny_policy_dir)),
             nprocs=2, join=True)  # fmt: skip
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    lora = lora_settings()
    shape = replace(shape_from_config(AutoConfig.from_pretrained(tiny_policy_dir)),
                    dtype="bfloat16")  # fmt: skip
    work = tiny_work(lora_rank=lora.r, lora_targets=tuple(sorted(lora.target_modules)),
                     data_parallel="fsdp")  # fmt: skip
    items = {i.name: i.bytes for i in trainer_side(shape, work, Hardware(gpus=2)).items}
    for rank, figures in enumerate(ranks):
        assert figures["at_rest"]["full"] == 0  # nothing gathered before the first forward
        assert_close(f"rank {rank} shards", figures["at_rest"]["shards"],
                     items["base weights"] + items["LoRA weights"])  # fmt: skip
        after = figures["after_forward"]
        assert after["full_in_layers"] == 0  # each layer resharded after its forward
        assert_close(f"rank {rank} root after forward", after["full"], items["unsharded root"])


# Meta-Llama-3-70B's published config.json (huggingface.co/meta-llama/Meta-Llama-3-70B):
# 70,553,706,496 parameters on the hub's safetensors index; 131.4 GiB in bfloat16
LLAMA3_70B = {
    "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
    "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}  # fmt: skip


def gpu_config_work(**values: Any) -> Workload:
    """configs/gpu-qwen2.5-3b.yaml's workload (rank 32 on every projection, 2 x 8192 tokens,
    checkpointing, one vLLM server)."""
    from trainer.config import load_config

    return replace(Workload.from_config(load_config(Path(GPU_CONFIG))), **values)


def fewest_fsdp_gpus(shape: ModelShape, work: Workload, available: int) -> int | None:
    """n_min by hand: (base + LoRA weights, grads, moments) / N + what each GPU holds in full
    (root, two layers, activations, logits) <= available."""
    targets = list(work.lora_targets)
    b, s, r = work.micro_batch_size, work.max_sequence_tokens, work.lora_rank
    d, lora = shape.dtype_bytes, lora_parameter_count(shape, r, targets)
    act = activation_bytes(shape, r, targets, b, s, work.gradient_checkpointing)
    logits, _ = logits_bytes(shape, b, s)
    layer_lora = lora_parameter_count(replace(shape, num_layers=1), r, targets)
    full = root_parameter_count(shape) * d + 2 * (layer_parameter_count(shape) * d + 4 * layer_lora)
    room = available - full - act.saved - act.recompute - act.masks - logits
    return -(-(parameter_count(shape) * d + 16 * lora) // room) if room > 0 else None


def test_a_base_larger_than_the_gpu_gets_fsdp_with_its_fewest_gpus() -> None:
    shape = shape_from_config(config_of("llama", **LLAMA3_70B))
    assert parameter_count(shape) == 70_553_706_496
    work, hw = gpu_config_work(), Hardware(gpus=8, gpu_memory=80 * GIB)
    plan = make_plan(shape, work, hw)
    n = fewest_fsdp_gpus(shape, work, 80 * GIB)
    assert n == 4  # 131.4 GiB of base: 3 GPUs leave too little beside 2 x 8192 tokens' logits
    fsdp = replace(work, data_parallel="fsdp")
    at_n = trainer_side(shape, fsdp, replace(hw, gpus=n))
    assert at_n.fits and not trainer_side(shape, fsdp, replace(hw, gpus=n - 1)).fits
    assert plan.changes[0].startswith("the base weights alone (131.42 GiB) exceed the GPU")
    assert plan.changes[1] == (
        f"data_parallel: fsdp over N GPUs holds 131.42 GiB / N on each (needs N >= {n}; "
        f"at --gpus {n}: {at_n.total / GIB:.2f} GiB of 80.00 GiB, fits)"
    )
    # served rollouts already: no word on the backend
    assert not any("policy.backend" in change for change in plan.changes)


def test_fsdp_that_no_n_can_fit_says_so_and_what_would() -> None:
    """Without checkpointing, 2 x 8192 tokens of a 70B's activations exceed any one GPU."""
    shape = shape_from_config(config_of("llama", **LLAMA3_70B))
    work = gpu_config_work(gradient_checkpointing=False, servers=0)  # the local backend
    plan = make_plan(shape, work, Hardware(gpus=8, gpu_memory=80 * GIB))
    assert fewest_fsdp_gpus(shape, work, 80 * GIB) is None
    lean = replace(work, gradient_checkpointing=True, micro_batch_size=1)
    n = fewest_fsdp_gpus(shape, lean, 80 * GIB)
    assert "data_parallel: fsdp cannot fit at any N with these settings" in plan.changes[1]
    assert "rollouts must then come from vLLM" in plan.changes[1]
    assert plan.changes[2] == (
        "together: data_parallel: fsdp, checkpointing, micro_batch_size 1, "
        f"max_sequence_tokens 8192: needs N >= {n}"
    )


def test_a_ddp_run_over_budget_gets_fsdp_on_the_same_gpus() -> None:
    shape = fixture_shape("qwen2.5-3b-instruct.json")
    work, hw = gpu_config_work(), Hardware(gpus=2, gpu_memory=20 * GIB)
    plan = make_plan(shape, work, hw)
    assert not plan.trainer.fits
    sharded = trainer_side(shape, replace(work, data_parallel="fsdp"), hw)
    assert sharded.fits  # sharding alone brings it under
    weights = parameter_count(shape) * 2
    lever = next(c for c in plan.changes if c.startswith("data_parallel: fsdp"))
    assert lever == (
        f"data_parallel: fsdp over the same 2 GPUs frees (1 - 1/2) x {weights / GIB:.2f} GiB "
        f"of base = {weights / 2 / GIB:.2f} GiB: {sharded.total / GIB:.2f} GiB of 20.00 GiB, fits"
    )
    fsdp = replace(work, data_parallel="fsdp")
    assert make_plan(shape, fsdp, hw).trainer.fits  # then no trainer lever at all
    # an fsdp run with too few GPUs: more of them
    n = fewest_fsdp_gpus(shape, fsdp, 18 * GIB)
    assert n is not None and n > 2
    plan = make_plan(shape, fsdp, replace(hw, gpu_memory=18 * GIB))
    more = f"more GPUs: data_parallel: fsdp over {n} GPUs (--gpus {n}): "
    assert any(change.startswith(more) for change in plan.changes), plan.changes


def test_cli_plans_fsdp(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--config", GPU_CONFIG, "--model-config", QWEN_3B, "--gpus", "4"]
    _, out, _ = toolgym([*argv, "--json"], capsys)
    ddp = json.loads(out)
    status, out, _ = toolgym([*argv, "--set", "data_parallel=fsdp", "--json"], capsys)
    fsdp = json.loads(out)
    assert status == 0 and fsdp["data_parallel"] == "fsdp" and fsdp["sharded"] is True
    assert ddp["data_parallel"] == "ddp" and ddp["sharded"] is False
    assert fsdp["workload"]["data_parallel"] == "fsdp"
    names = [item["name"] for item in fsdp["trainer"]["items"]]
    assert names[:3] == ["base weights", "unsharded root", "gathered layers"]
    assert "DDP grad buckets" not in names
    assert fsdp["trainer"]["total"] < ddp["trainer"]["total"]
    status, out, _ = toolgym([*argv, "--set", "data_parallel=fsdp"], capsys)
    assert status == 0 and "4 FSDP ranks" in out and "/ 4 ranks: this rank's shard" in out
