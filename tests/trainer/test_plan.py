"""`toolgym plan`'s arithmetic against the real thing: parameter counts of models built here,
PEFT's trainable count, the bytes autograd keeps during the trainer's own forward (measured with
saved_tensors_hooks), and published figures of known models; then the CLI's answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from trainer.cli import main
from trainer.plan_cli import parse_size
from trainer.plan_model import (
    ModelShape,
    activation_bytes,
    kv_bytes_per_token,
    logits_bytes,
    lora_parameter_count,
    parameter_count,
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
