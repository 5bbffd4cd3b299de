"""The fake vLLM server: wire shape, toy tokens, the prefix property, LoRA routes, faults."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from _servers import FakeServer, fake_vllm

from rollout.fake_vllm import (
    DEFAULT_MODEL,
    IM_END,
    SPECIAL_IDS,
    FakeSettings,
    decode,
    echo_script,
    encode,
    parse_hermes,
    render_prompt,
    toy_logprob,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} the corpus",
            "parameters": {"type": "object", "properties": {arg: {"type": "string"}}},
        },
    }
    for name, arg in (("search", "query"), ("read", "path"))
]
QUESTION = "What was Marlow Capital's revenue in 2023?"
SEARCH_RESULT = (
    "filings/marlow-2023.html (score 0.912)\n  Marlow Capital annual report [offset 0]\n"
    "reports/other.html (score 0.500)"
)
READ_RESULT = "Marlow Capital, fiscal 2023. Revenue was $12.5 million, up 4% on 2022."


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with fake_vllm(FakeSettings(allow_runtime_lora=True)) as live:
        yield live


def chat(url: str, **fields: Any) -> httpx.Response:
    body = {"model": DEFAULT_MODEL, "return_token_ids": True, "logprobs": True, **fields}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)


def test_tokenizer_round_trips_text_and_special_tokens() -> None:
    text = "<|im_start|>user\nprix: 12 €<|im_end|>\n<tool_call>x</tool_call>"
    ids = encode(text)
    assert decode(ids) == text
    assert ids[0] == SPECIAL_IDS["<|im_start|>"]
    assert len(encode("a€")) == 2  # four UTF-8 bytes, up to three per id
    assert decode(encode("a€")[:1]) + decode(encode("a€")[1:]) != "a€"  # a char split in two
    # Chunking restarts after a newline: ids never straddle the generation prompt's end.
    assert encode("assistant\n" + "Answer: 42") == encode("assistant\n") + encode("Answer: 42")


def test_tool_call_reply_has_vllm_wire_shape(server: FakeServer) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    reply = chat(server.url, messages=messages, tools=TOOLS, tool_choice="auto", seed=7)
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage", "prompt_token_ids"}
    assert body["object"] == "chat.completion" and body["model"] == DEFAULT_MODEL
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["index"] == 0
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] is None
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
    assert call["function"]["name"] == "search"
    assert json.loads(call["function"]["arguments"]) == {"query": QUESTION}
    ids = choice["token_ids"]
    assert ids[-1] == IM_END and ids[0] == SPECIAL_IDS["<tool_call>"]
    assert body["prompt_token_ids"] == encode(render_prompt(messages, TOOLS))
    assert decode(body["prompt_token_ids"]).endswith("<|im_start|>assistant\n")
    entries = choice["logprobs"]["content"]
    assert [e["logprob"] for e in entries] == [toy_logprob(7, i) for i in range(len(ids))]
    assert all(e["logprob"] < 0 and e["top_logprobs"] == [] for e in entries)
    assert entries[1]["token"] == "\n" and entries[1]["bytes"] == [10]
    assert body["usage"] == {
        "prompt_tokens": len(body["prompt_token_ids"]),
        "completion_tokens": len(ids),
        "total_tokens": len(body["prompt_token_ids"]) + len(ids),
    }


def test_plain_reply_without_token_ids_or_logprobs(server: FakeServer) -> None:
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body).json()
    assert "prompt_token_ids" not in reply and "token_ids" not in reply["choices"][0]
    assert reply["choices"][0]["logprobs"] is None
    assert reply["choices"][0]["message"]["tool_calls"] == []


def test_rerendered_conversation_extends_prompt_plus_completion(server: FakeServer) -> None:
    """The agent script over three turns: each prompt starts with the last prompt + completion."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Answer from the filings."},
        {"role": "user", "content": QUESTION},
    ]
    previous: list[int] = []
    for observation in (SEARCH_RESULT, READ_RESULT, None):
        body = chat(server.url, messages=messages, tools=TOOLS, seed=1).json()
        prompt, choice = body["prompt_token_ids"], body["choices"][0]
        assert prompt[: len(previous)] == previous and len(prompt) > len(previous)
        previous = prompt + choice["token_ids"]
        message = choice["message"]
        if observation is None:
            assert message["content"] == "Answer: $12.5 million"
            assert choice["finish_reason"] == "stop"
            break
        messages.append(message)
        call = message["tool_calls"][0]
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": observation})
    calls = [m["tool_calls"][0]["function"] for m in messages if m.get("tool_calls")]
    assert [c["name"] for c in calls] == ["search", "read"]
    assert json.loads(calls[1]["arguments"]) == {"path": "filings/marlow-2023.html"}


def test_max_tokens_cuts_with_length_and_no_end_token(server: FakeServer) -> None:
    body = chat(server.url, messages=[{"role": "user", "content": "x"}], max_tokens=5).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["token_ids"]) == 5
    assert IM_END not in choice["token_ids"] and choice["message"]["content"] == "Answer: unknown"


def test_prompt_over_max_model_len_is_400() -> None:
    with fake_vllm(FakeSettings(max_model_len=64)) as live:
        reply = chat(live.url, messages=[{"role": "user", "content": "y" * 300}])
    assert reply.status_code == 400
    assert "maximum context length is 64" in reply.json()["error"]["message"]


def test_errors_use_vllm_bodies(server: FakeServer) -> None:
    unknown = chat(server.url, model="nope", messages=[{"role": "user", "content": "x"}])
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": {
            "message": "The model `nope` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    }
    for bad in (chat(server.url), chat(server.url, messages=[{"role": "robot"}])):
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "BadRequestError"
    raw = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json")
    assert raw.status_code == 400
    streamed = chat(server.url, messages=[{"role": "user", "content": "x"}], stream=True)
    assert streamed.status_code == 400


def test_without_tool_parser_markup_stays_in_content() -> None:
    with fake_vllm(FakeSettings(tool_parser=False)) as live:
        body = chat(live.url, messages=[{"role": "user", "content": QUESTION}], tools=TOOLS)
    choice = body.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["tool_calls"] == []
    assert choice["message"]["content"].startswith('<tool_call>\n{"name": "search"')


def test_hermes_parser_keeps_broken_markup_as_content() -> None:
    assert parse_hermes("<tool_call>\n{broken\n</tool_call>") == (
        "<tool_call>\n{broken\n</tool_call>",
        [],
    )
    content, calls = parse_hermes('Let me look.\n<tool_call>\n{"name": "a"}\n</tool_call>')
    assert content == "Let me look." and calls[0]["function"]["arguments"] == "{}"


def test_lora_routes_and_models(server: FakeServer, tmp_path: Path) -> None:
    adapter = tmp_path / "v1"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    load = f"{server.url}/v1/load_lora_adapter"
    ok = httpx.post(load, json={"lora_name": "policy-v1", "lora_path": str(adapter)})
    assert ok.status_code == 200 and "added successfully" in ok.text
    again = httpx.post(load, json={"lora_name": "policy-v1", "lora_path": str(adapter)})
    assert again.status_code == 400 and "load_inplace" in again.json()["error"]["message"]
    inplace = {"lora_name": "policy-v1", "lora_path": str(adapter), "load_inplace": True}
    assert httpx.post(load, json=inplace).status_code == 200
    missing = httpx.post(load, json={"lora_name": "x", "lora_path": str(tmp_path / "none")})
    assert missing.status_code == 404  # vLLM 0.33: NotFoundError, as for a lagging shared fs
    assert missing.json()["error"] == {
        "message": f"Loading lora x failed: No adapter found for {tmp_path / 'none'}",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    models = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == [DEFAULT_MODEL, "policy-v1"]
    assert models[1]["parent"] == DEFAULT_MODEL and models[1]["root"] == str(adapter)
    served = chat(server.url, model="policy-v1", messages=[{"role": "user", "content": "x"}])
    assert served.json()["model"] == "policy-v1"
    unload = f"{server.url}/v1/unload_lora_adapter"
    assert httpx.post(unload, json={"lora_name": "policy-v1"}).status_code == 200
    assert httpx.post(unload, json={"lora_name": "policy-v1"}).status_code == 404


def test_lora_routes_absent_without_runtime_updating() -> None:
    with fake_vllm() as live:
        body = {"lora_name": "a", "lora_path": "/tmp"}
        assert httpx.post(f"{live.url}/v1/load_lora_adapter", json=body).status_code == 404


def test_faults_fail_delay_and_dead() -> None:
    with fake_vllm(FakeSettings(script=echo_script)) as live:
        live.faults.fail_next(2, 429)
        message = [{"role": "user", "content": "ping"}]
        codes = [chat(live.url, messages=message).status_code for _ in range(3)]
        assert codes == [429, 429, 200]
        assert (live.faults.received, live.faults.served) == (3, 1)
        live.faults.delay_s = 0.4
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: chat(live.url, messages=message), range(8)))
        assert all(r.json()["choices"][0]["message"]["content"] == "Answer: ping" for r in replies)
        assert time.perf_counter() - started < 1.6  # the delays overlapped
        live.faults.dead = True
        assert httpx.get(f"{live.url}/health").status_code == 503
        assert chat(live.url, messages=message).status_code == 503
        live.faults.dead = False
        assert httpx.get(f"{live.url}/health").status_code == 200


def test_api_key_guards_v1_only() -> None:
    with fake_vllm(FakeSettings(api_key="sekret")) as live:
        assert httpx.get(f"{live.url}/v1/models").status_code == 401
        headers = {"Authorization": "Bearer sekret"}
        assert httpx.get(f"{live.url}/v1/models", headers=headers).status_code == 200
        assert httpx.get(f"{live.url}/health").status_code == 200


def test_byte_tokens_fit_a_small_vocabulary_and_say_the_same() -> None:
    """`byte_tokens`: one id per byte, so a tiny model (vocab 512) can train on what was served;
    the text and the number of logprobs agree with the ids."""
    messages = [{"role": "user", "content": "prix: 12 € in 2023"}]
    with fake_vllm(FakeSettings(script=echo_script)) as toy:
        wide = chat(toy.url, messages=messages).json()
    with fake_vllm(FakeSettings(script=echo_script, byte_tokens=True)) as small:
        narrow = chat(small.url, messages=messages).json()
    ids = narrow["prompt_token_ids"] + narrow["choices"][0]["token_ids"]
    assert max(ids) <= max(SPECIAL_IDS.values()) and max(wide["prompt_token_ids"]) > 1024
    assert decode(narrow["prompt_token_ids"]) == decode(wide["prompt_token_ids"])
    assert narrow["choices"][0]["message"] == wide["choices"][0]["message"]
    entries = narrow["choices"][0]["logprobs"]["content"]
    assert (
        len(entries)
        == len(narrow["choices"][0]["token_ids"])
        > len(wide["choices"][0]["token_ids"])
    )
