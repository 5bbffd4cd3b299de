"""LocalPolicy and the tiny offline model: real generate calls on a random-weight Qwen2."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from rollout.errors import PolicyRequestError, PolicyUnavailableError
from rollout.local_generation import turn_from_generation
from rollout.local_policy import LocalPolicy
from rollout.lora_fold import AdapterFolding, lora_layers
from rollout.policy import SamplingParams, Turn, TurnRequest
from rollout.tiny_policy import build_tiny_policy
from testkit import task_alive, wait_until_async
from tinymodels import save_random_adapter

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search_filings",
            "description": "Search company filings.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


def ask(question: str, sampling: SamplingParams = GREEDY, **kwargs: Any) -> TurnRequest:
    return TurnRequest([{"role": "user", "content": question}], TOOLS, sampling, **kwargs)


QUESTIONS = [
    "What was the revenue of Henderson Industries?",
    "Net income of Marlow Capital in Q3 2024?",
    "Total debt?",
    "What was the free cash flow of Quillfield Energy in Q1 2021, and how did it compare?",
]


@pytest.fixture
def policy(tiny_policy_dir: Path) -> Iterator[LocalPolicy]:
    local = LocalPolicy.from_pretrained(tiny_policy_dir, name="tiny", max_context=1024)
    yield local
    asyncio.run(local.aclose())


def run_one(policy: LocalPolicy, request: TurnRequest) -> Turn:
    return asyncio.run(policy.complete(request))


def run_many(policy: LocalPolicy, requests: list[TurnRequest]) -> list[Turn]:
    async def go() -> list[Turn]:
        return list(await asyncio.gather(*(policy.complete(r) for r in requests)))

    return asyncio.run(go())


def count_generate(policy: LocalPolicy, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap the model's generate; the list collects the batch size of every call."""
    calls: list[int] = []
    original = policy.hf_model.generate

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["input_ids"].shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(policy.hf_model, "generate", counting)
    return calls


# ----------------------------------------------------------------- the tiny model


def test_template_renders_tools_and_tool_calls_and_reloads_offline(tiny_policy_dir: Path) -> None:
    tokenizer: Any = AutoTokenizer.from_pretrained(tiny_policy_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, local_files_only=True)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Revenue?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "search_filings",
                 "arguments": {"query": "revenue"}}},
                {"id": "b", "type": "function", "function": {"name": "search_filings",
                 "arguments": '{"query": "debt"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "revenue 12"},
        {"role": "tool", "tool_call_id": "b", "content": "debt 3"},
    ]  # fmt: skip
    text = tokenizer.apply_chat_template(
        messages, tools=TOOLS, add_generation_prompt=True, tokenize=False
    )
    assert isinstance(text, str)
    assert "\nsearch_filings(query)\n" in text  # tools listed as signatures
    call = (
        '<tool_call>\n{"name": "search_filings", "arguments": {"query": "revenue"}}\n</tool_call>'
    )
    assert call in text
    assert '{"name": "search_filings", "arguments": {"query": "debt"}}\n</tool_call><|im_end|>' in (
        text
    )
    assert (
        "<|im_start|>user\n<tool_response>\nrevenue 12\n</tool_response>\n"
        "<tool_response>\ndebt 3\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    ) in text
    assert text.endswith("<|im_start|>assistant\n")
    for markup in ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"):
        assert len(tokenizer.encode(markup)) == 1
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.padding_side == "left"
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == eos and model.config.tie_word_embeddings
    # the reloaded tokenizer (rebuilt by AutoTokenizer) splits text exactly as the trained one
    backend = Tokenizer.from_file(str(tiny_policy_dir / "tokenizer.json"))
    assert tokenizer.encode(text) == backend.encode(text).ids


def test_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    texts = [
        f"Marlow Capital reported net income of ${n}.5 million in Q{n % 4 + 1}." for n in range(60)
    ]
    first = build_tiny_policy(tmp_path / "a", texts, vocab_size=300, hidden_size=32, seed=5)
    second = build_tiny_policy(tmp_path / "b", texts, vocab_size=300, hidden_size=32, seed=5)
    other = build_tiny_policy(tmp_path / "c", texts, vocab_size=300, hidden_size=32, seed=6)
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    weights = [AutoModelForCausalLM.from_pretrained(d).state_dict() for d in (first, second, other)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


# ----------------------------------------------------------------- turns


def test_complete_returns_the_template_ids_and_one_logprob_per_token(policy: LocalPolicy) -> None:
    request = ask(QUESTIONS[0])
    turn = run_one(policy, request)
    expected = policy.tokenizer.apply_chat_template(
        request.messages, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert turn.prompt_ids == list(expected)
    assert 0 < len(turn.completion_ids) <= GREEDY.max_tokens
    assert len(turn.logprobs) == len(turn.completion_ids)
    assert all(lp <= 0.0 for lp in turn.logprobs)
    assert turn.finish_reason in {"stop", "length", "tool_calls"}
    if turn.finish_reason == "length":
        assert len(turn.completion_ids) == GREEDY.max_tokens
    assert turn.model == "tiny" == policy.model
    assert turn.message["role"] == "assistant" and turn.latency_s > 0


def test_greedy_is_deterministic(policy: LocalPolicy) -> None:
    first, second = run_one(policy, ask(QUESTIONS[1])), run_one(policy, ask(QUESTIONS[1]))
    assert first.completion_ids == second.completion_ids
    assert first.logprobs == pytest.approx(second.logprobs, abs=1e-6)


def test_concurrent_requests_share_one_generate_and_match_one_at_a_time(
    policy: LocalPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_generate(policy, monkeypatch)
    requests = [ask(q) for q in QUESTIONS]  # different lengths: real left padding
    alone = [run_one(policy, r) for r in requests]
    assert calls == [1, 1, 1, 1]
    together = run_many(policy, requests)
    assert calls[4:] == [len(requests)]
    for single, batched in zip(alone, together, strict=True):
        assert batched.prompt_ids == single.prompt_ids
        assert batched.completion_ids == single.completion_ids
        assert batched.logprobs == pytest.approx(single.logprobs, abs=1e-4)


def test_incompatible_sampling_settings_are_separate_generates(
    policy: LocalPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_generate(policy, monkeypatch)
    hot = SamplingParams(temperature=0.8, max_tokens=6)
    run_many(policy, [ask(QUESTIONS[0]), ask(QUESTIONS[1], hot), ask(QUESTIONS[2]), ask("x", hot)])
    assert sorted(calls) == [2, 2]


def forward_log_softmax(policy: LocalPolicy, turn: Turn, temperature: float = 1.0) -> torch.Tensor:
    """Log-softmax of the model's next-token logits at each completion position."""
    ids = torch.tensor([turn.prompt_ids + turn.completion_ids])  # (1, seq)
    with torch.no_grad():
        logits = policy.hf_model(input_ids=ids).logits[0].float()  # (seq, vocab)
    start = len(turn.prompt_ids) - 1
    steps = logits[start : start + len(turn.completion_ids)]  # (completion, vocab)
    return torch.log_softmax(steps / temperature, dim=-1)  # (completion, vocab)


def test_greedy_logprobs_are_the_max_log_softmax(policy: LocalPolicy) -> None:
    turn = run_one(policy, ask(QUESTIONS[3]))
    log_probs = forward_log_softmax(policy, turn)  # (completion, vocab)
    chosen = log_probs.gather(1, torch.tensor(turn.completion_ids)[:, None])[:, 0]  # (completion,)
    assert turn.logprobs == pytest.approx(chosen.tolist(), abs=1e-4)
    assert turn.logprobs == pytest.approx(log_probs.max(dim=-1).values.tolist(), abs=1e-4)


def test_sampled_logprobs_follow_the_temperature_and_seeds_reproduce(policy: LocalPolicy) -> None:
    sampling = SamplingParams(temperature=0.5, top_p=1.0, max_tokens=10)
    turn = run_one(policy, ask(QUESTIONS[0], sampling, seed=7))
    again = run_one(policy, ask(QUESTIONS[0], sampling, seed=7))
    assert again.completion_ids == turn.completion_ids
    log_probs = forward_log_softmax(policy, turn, temperature=0.5)  # (completion, vocab)
    chosen = log_probs.gather(1, torch.tensor(turn.completion_ids)[:, None])[:, 0]  # (completion,)
    assert turn.logprobs == pytest.approx(chosen.tolist(), abs=1e-4)
    seeds = [run_one(policy, ask(QUESTIONS[0], sampling, seed=s)).completion_ids for s in range(4)]
    assert len({tuple(s) for s in seeds}) > 1


# ----------------------------------------------------------------- adapters and errors


def test_adapter_swap_changes_outputs_in_place_and_base_restores(
    policy: LocalPolicy, tiny_lora_adapter_dir: Path
) -> None:
    model_object = policy.hf_model
    base = run_one(policy, ask(QUESTIONS[0]))
    asyncio.run(policy.swap_adapter(tiny_lora_adapter_dir, "v1"))
    assert policy.model == "v1" and policy.adapters == ["v1"]
    tuned = run_one(policy, ask(QUESTIONS[0]))
    assert tuned.model == "v1"
    assert tuned.logprobs != pytest.approx(base.logprobs, abs=1e-3)
    as_base = run_one(policy, ask(QUESTIONS[0], model="tiny"))
    assert as_base.model == "tiny" and as_base.completion_ids == base.completion_ids
    assert as_base.logprobs == pytest.approx(base.logprobs, abs=1e-5)

    asyncio.run(policy.swap_adapter(tiny_lora_adapter_dir, "v2"))
    assert policy.model == "v2" and policy.adapters == ["v2"]  # v1 deleted
    assert policy.hf_model is model_object
    again = run_one(policy, ask(QUESTIONS[0]))
    assert again.model == "v2" and again.completion_ids == tuned.completion_ids
    with pytest.raises(PolicyRequestError, match="v1"):
        run_one(policy, ask(QUESTIONS[0], model="v1"))

    asyncio.run(policy.unload_adapter("v2"))
    assert policy.model == "tiny" and policy.adapters == []
    assert run_one(policy, ask(QUESTIONS[0])).completion_ids == base.completion_ids


def base_weights(policy: LocalPolicy) -> dict[str, torch.Tensor]:
    """The base model's weights by their names before PEFT wrapped any layer."""
    return {
        name.replace(".base_layer", ""): weight.detach().clone()
        for name, weight in policy.hf_model.named_parameters()
        if "lora_" not in name
    }


def routed_logprobs(policy_dir: Path, adapter: Path, turn: Turn) -> list[float]:
    """The logprobs of `turn`'s completion under `adapter` routed by PEFT in a separate,
    unfolded model: what a folded LocalPolicy must reproduce."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(policy_dir, local_files_only=True)
    routed = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = torch.tensor([turn.prompt_ids + turn.completion_ids])  # (1, seq)
    with torch.no_grad():
        logits = routed(input_ids=ids).logits[0].float()  # (seq, vocab)
    start = len(turn.prompt_ids) - 1
    steps = torch.log_softmax(logits[start : start + len(turn.completion_ids)], dim=-1)
    chosen = steps.gather(1, torch.tensor(turn.completion_ids)[:, None])[:, 0]  # (completion,)
    return [float(x) for x in chosen]


def test_a_folded_adapter_plays_what_peft_routes_and_the_base_comes_back_bit_exact(
    policy: LocalPolicy, tiny_policy_dir: Path, tiny_lora_adapter_dir: Path
) -> None:

    pristine = base_weights(policy)
    asyncio.run(policy.swap_adapter(tiny_lora_adapter_dir, "v1"))
    tuned = run_one(policy, ask(QUESTIONS[1]))
    folded = base_weights(policy)
    changed = [k for k in pristine if not torch.equal(folded[k], pristine[k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)  # the targets only
    assert all(layer.merged for layer in lora_layers(policy.hf_model))

    # the same adapter routed by PEFT (a separate, unfolded model) scores the same tokens alike
    routed = routed_logprobs(tiny_policy_dir, tiny_lora_adapter_dir, tuned)
    assert tuned.logprobs == pytest.approx(routed, abs=1e-4)

    for round_ in range(3):  # tuned, base, a new adapter, ...: the base never drifts
        assert run_one(policy, ask(QUESTIONS[1])).completion_ids == tuned.completion_ids
        run_one(policy, ask(QUESTIONS[1], model="tiny"))
        now = base_weights(policy)
        assert all(torch.equal(now[k], pristine[k]) for k in pristine), round_
        asyncio.run(policy.swap_adapter(tiny_lora_adapter_dir, f"w{round_}"))
    run_one(policy, ask(QUESTIONS[1]))  # folds w2 in
    asyncio.run(policy.unload_adapter("w2"))
    now = base_weights(policy)
    assert all(torch.equal(now[k], pristine[k]) for k in pristine)


def test_an_adapter_on_lm_head_plays_what_peft_routes_and_leaves_the_embeddings_alone(
    policy: LocalPolicy, tiny_policy_dir: Path, tmp_path: Path
) -> None:
    """The tiny policy ties lm_head to the input embeddings: an adapter on lm_head must change
    what the model writes, never the tokens it reads."""

    adapter = save_random_adapter(tiny_policy_dir, tmp_path / "head", ("q_proj", "lm_head"))
    pristine = base_weights(policy)
    embeddings = policy.hf_model.get_input_embeddings().weight.detach().clone()
    asyncio.run(policy.swap_adapter(adapter, "h1"))
    tuned = run_one(policy, ask(QUESTIONS[1]))
    assert torch.equal(policy.hf_model.get_input_embeddings().weight, embeddings)

    routed = routed_logprobs(tiny_policy_dir, adapter, tuned)
    assert tuned.logprobs == pytest.approx(routed, abs=1e-4)
    asyncio.run(policy.unload_adapter("h1"))
    now = base_weights(policy)
    assert all(torch.equal(now[k], pristine[k]) for k in pristine)


def test_a_layer_whose_weight_is_tied_stays_routed_while_the_rest_fold(
    tiny_policy_dir: Path, tmp_path: Path
) -> None:
    """transformers' load_adapter gives the wrapped lm_head a copy of the tied weight today; a
    loader that kept the tie would have the fold write into the embeddings. A shared weight
    stays routed, q_proj folds, and the outputs are the routed ones."""
    adapter = save_random_adapter(tiny_policy_dir, tmp_path / "head", ("q_proj", "lm_head"))
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, local_files_only=True).eval()
    model.load_adapter(str(adapter), adapter_name="h1")
    model.lm_head.base_layer.weight = model.model.embed_tokens.weight  # tied again
    ids = torch.arange(1, 40)[None]  # (1, 39)
    with torch.no_grad():
        routed = model(input_ids=ids).logits  # (1, 39, vocab)
    before = model.model.embed_tokens.weight.detach().clone()
    AdapterFolding(model).select("h1")
    merged = {name.rsplit(".", 1)[-1]: layer.merged for name, layer in model.named_modules()
              if layer in lora_layers(model)}  # fmt: skip
    assert merged == {"q_proj": True, "lm_head": False}
    assert torch.equal(model.model.embed_tokens.weight, before)
    with torch.no_grad():
        folded = model(input_ids=ids).logits  # (1, 39, vocab)
    assert torch.allclose(folded, routed, atol=1e-4)


def test_swap_waits_for_the_batch_in_flight(
    policy: LocalPolicy, tiny_lora_adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()
    original = policy.hf_model.generate

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(policy.hf_model, "generate", slow)

    async def go() -> list[Turn]:
        tasks = [asyncio.create_task(policy.complete(ask(q))) for q in QUESTIONS[:2]]
        alive = [task_alive(task, name=f"complete #{i}") for i, task in enumerate(tasks)]
        await wait_until_async(started.is_set, what="generate to start", alive=alive)
        await policy.swap_adapter(tiny_lora_adapter_dir, "v1")
        assert all(task.done() for task in tasks)  # the swap waited for them
        return [await task for task in tasks]

    assert [turn.model for turn in asyncio.run(go())] == ["tiny", "tiny"]
    assert policy.model == "v1"


def test_unknown_model_and_over_long_prompts_are_request_errors(policy: LocalPolicy) -> None:
    with pytest.raises(PolicyRequestError, match="unknown model 'nope'"):
        run_one(policy, ask(QUESTIONS[0], model="nope"))
    with pytest.raises(PolicyRequestError, match="max_context"):
        run_one(policy, ask("Henderson Industries reported revenue. " * 400))
    assert run_one(policy, ask(QUESTIONS[2])).finish_reason  # the policy still serves


def test_closing_fails_the_running_batch_and_refuses_new_requests(
    policy: LocalPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()
    original = policy.hf_model.generate

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        time.sleep(0.2)
        return original(*args, **kwargs)

    monkeypatch.setattr(policy.hf_model, "generate", slow)

    async def go() -> None:
        task = asyncio.create_task(policy.complete(ask(QUESTIONS[0])))
        alive = task_alive(task, name="complete")
        await wait_until_async(started.is_set, what="generate to start", alive=alive)
        await policy.aclose()
        with pytest.raises(PolicyUnavailableError):
            await asyncio.wait_for(task, 5)

    asyncio.run(go())
    with pytest.raises(PolicyUnavailableError):
        run_one(policy, ask(QUESTIONS[0]))


# ----------------------------------------------------------------- ids -> Turn


def test_generated_tool_call_markup_becomes_openai_tool_calls(tiny_policy_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir, local_files_only=True)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    body = 'Let me look.\n<tool_call>\n{"name": "search_filings", "arguments": {"query": "debt"}}'
    ids = [*tokenizer.encode(body + "\n</tool_call>"), eos, pad, pad]
    turn = turn_from_generation(
        tokenizer, [1, 2], ids, [-0.5] * len(ids), eos_ids=frozenset({eos}), model="m", latency_s=0
    )
    assert turn.finish_reason == "tool_calls"
    assert turn.completion_ids == ids[:-2] and len(turn.logprobs) == len(ids) - 2
    assert turn.message["content"] == "Let me look."
    [call] = turn.message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "search_filings"
    assert json.loads(call["function"]["arguments"]) == {"query": "debt"}

    plain = tokenizer.encode("Revenue was $12.5 million.")
    stop = turn_from_generation(
        tokenizer, [1], [*plain, eos], [-1.0] * (len(plain) + 1), eos_ids=frozenset({eos}),
        model="m", latency_s=0,
    )  # fmt: skip
    assert stop.finish_reason == "stop"
    assert stop.message == {"role": "assistant", "content": "Revenue was $12.5 million."}
    cut = turn_from_generation(
        tokenizer, [1], plain, [-1.0] * len(plain), eos_ids=frozenset({eos}), model="m",
        latency_s=0,
    )  # fmt: skip
    assert cut.finish_reason == "length" and cut.completion_ids == plain


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_greedy_batches_on_the_gpu_match_the_cpu(
    policy: LocalPolicy, tiny_policy_dir: Path
) -> None:
    gpu = LocalPolicy.from_pretrained(tiny_policy_dir, name="tiny", device="cuda", max_context=1024)
    try:
        requests = [ask(q) for q in QUESTIONS]
        for on_cpu, on_gpu in zip(run_many(policy, requests), run_many(gpu, requests), strict=True):
            assert on_gpu.completion_ids == on_cpu.completion_ids
            assert on_gpu.logprobs == pytest.approx(on_cpu.logprobs, abs=1e-3)
        sampling = SamplingParams(temperature=1.0, max_tokens=8)
        seeded = [run_one(gpu, ask(QUESTIONS[0], sampling, seed=3)) for _ in range(2)]
        assert seeded[0].completion_ids == seeded[1].completion_ids
    finally:
        asyncio.run(gpu.aclose())
