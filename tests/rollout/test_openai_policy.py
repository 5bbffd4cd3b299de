"""OpenAIPolicy against real fake-vLLM servers: exact tokens, retries, errors, balancing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from _servers import FakeServer, fake_vllm, free_port

from envs.actions import parse_action
from rollout.errors import (
    PolicyRequestError,
    PolicyTimeoutError,
    PolicyUnavailableError,
    RolloutConfigError,
    TokenIdsMissingError,
)
from rollout.fake_vllm import (
    DEFAULT_MODEL,
    IM_END,
    FakeSettings,
    echo_script,
    encode,
    render_prompt,
    toy_logprob,
)
from rollout.openai_policy import OpenAIPolicy, normalise_base_url
from rollout.policy import SamplingParams, Turn, TurnRequest

TOOLS = [
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}},
]
QUESTION = [{"role": "user", "content": "What was the revenue of Marlow Capital?"}]


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with fake_vllm(FakeSettings(allow_runtime_lora=True)) as live:
        yield live


def complete(policy: OpenAIPolicy, request: TurnRequest) -> Turn:
    async def run() -> Turn:
        try:
            return await policy.complete(request)
        finally:
            await policy.aclose()

    return asyncio.run(run())


def fast(urls: str | list[str], **kwargs: float) -> OpenAIPolicy:
    settings = {"timeout_s": 5.0, "attempts": 3, "backoff_s": 0.01, **kwargs}
    return OpenAIPolicy(urls, DEFAULT_MODEL, **settings)  # type: ignore[arg-type]


def test_base_urls_are_normalised() -> None:
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"):
        assert normalise_base_url(url) == "http://h:8000"


def test_turn_records_ids_and_logprobs_exactly_as_served(server: FakeServer) -> None:
    sampling = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=300)
    request = TurnRequest(QUESTION, TOOLS, sampling=sampling, seed=3)
    turn = complete(fast(server.url + "/v1"), request)
    assert turn.prompt_ids == encode(render_prompt(QUESTION, TOOLS))
    assert turn.completion_ids[-1] == IM_END
    assert turn.logprobs == [toy_logprob(3, i) for i in range(len(turn.completion_ids))]
    assert turn.finish_reason == "tool_calls" and turn.model == DEFAULT_MODEL
    assert turn.latency_s > 0
    assert turn.message["content"] == ""
    (call,) = turn.message["tool_calls"]
    assert set(call) == {"id", "type", "function"} and call["function"]["name"] == "search"
    assert json.loads(call["function"]["arguments"]) == {"query": QUESTION[0]["content"]}
    sent = server.fake.history[-1]
    assert (sent.tool_choice, sent.logprobs, sent.return_token_ids, sent.seed) == (
        "auto",
        True,
        True,
        3,
    )
    assert (sent.temperature, sent.top_p, sent.max_tokens) == (0.7, 0.9, 300)


def test_markup_without_tool_parser_is_left_in_content() -> None:
    with fake_vllm(FakeSettings(tool_parser=False)) as live:
        turn = complete(fast(live.url), TurnRequest(QUESTION, TOOLS))
    assert "tool_calls" not in turn.message and turn.finish_reason == "stop"
    assert turn.message["content"].startswith("<tool_call>")
    assert parse_action(turn.message).tool_calls[0].name == "search"


def test_set_model_routes_to_an_adapter(server: FakeServer) -> None:
    server.fake.adapters["policy-v2"] = "/adapters/v2"
    policy = fast(server.url)
    policy.set_model("policy-v2")
    assert policy.model == "policy-v2"
    assert complete(policy, TurnRequest(QUESTION, [])).model == "policy-v2"
    explicit = TurnRequest(QUESTION, [], model=DEFAULT_MODEL)
    assert complete(fast(server.url), explicit).model == DEFAULT_MODEL


def test_unknown_model_is_refused_without_retries(server: FakeServer) -> None:
    with pytest.raises(PolicyRequestError, match="does not exist") as info:
        complete(fast(server.url), TurnRequest(QUESTION, [], model="policy-v9"))
    assert "HTTP 404" in str(info.value) and server.faults.received == 1


def test_503s_are_retried(server: FakeServer) -> None:
    server.faults.fail_next(2, 503)
    turn = complete(fast(server.url), TurnRequest(QUESTION, TOOLS))
    assert turn.finish_reason == "tool_calls" and server.faults.received == 3


def test_a_hung_request_is_retried_after_the_timeout(server: FakeServer) -> None:
    server.faults.hang_next(1)
    started = time.perf_counter()
    turn = complete(fast(server.url, timeout_s=0.3), TurnRequest(QUESTION, TOOLS))
    assert turn.completion_ids and time.perf_counter() - started < 2.0
    assert server.faults.received == 2


def test_a_permanently_slow_server_times_out_cleanly(server: FakeServer) -> None:
    server.faults.delay_s = 30.0
    started = time.perf_counter()
    with pytest.raises(PolicyTimeoutError) as info:
        complete(fast(server.url, timeout_s=0.2, attempts=2), TurnRequest(QUESTION, TOOLS))
    assert time.perf_counter() - started < 1.5
    message = str(info.value)
    assert server.url in message and "2 attempt" in message and "no reply within 0.2 s" in message


def test_budget_spent_on_5xx_or_no_server_is_unavailable(server: FakeServer) -> None:
    server.faults.fail_next(5, 500)
    with pytest.raises(PolicyUnavailableError, match="HTTP 500"):
        complete(fast(server.url), TurnRequest(QUESTION, []))
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PolicyUnavailableError, match="ConnectError"):
        complete(fast(nobody, attempts=2), TurnRequest(QUESTION, []))


def test_missing_token_ids_name_the_server_requirement() -> None:
    def reply(_: httpx.Request) -> httpx.Response:
        message = {"role": "assistant", "content": "hi"}
        choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        return httpx.Response(200, json={"model": "m", "choices": [choice]})

    policy = OpenAIPolicy("http://old-server", "m", transport=httpx.MockTransport(reply))
    with pytest.raises(TokenIdsMissingError, match="return_token_ids"):
        complete(policy, TurnRequest(QUESTION, []))


def test_load_is_shared_across_servers() -> None:
    with fake_vllm(FakeSettings(script=echo_script)) as a, fake_vllm() as b:
        a.faults.delay_s = b.faults.delay_s = 0.2
        policy = fast([a.url, b.url + "/v1"])

        async def run() -> list[Turn]:
            try:
                return await asyncio.gather(
                    *(policy.complete(TurnRequest(QUESTION, [])) for _ in range(12))
                )
            finally:
                await policy.aclose()

        turns = asyncio.run(run())
        assert len(turns) == 12 and (a.faults.served, b.faults.served) == (6, 6)
        assert all(n == 0 for n in policy.in_flight().values())


def test_a_dead_server_is_avoided_after_failures() -> None:
    with fake_vllm() as alive, fake_vllm() as dead:
        dead.faults.dead = True
        policy = fast([dead.url, alive.url])

        async def run() -> None:
            try:
                for _ in range(10):
                    await policy.complete(TurnRequest(QUESTION, []))
            finally:
                await policy.aclose()

        asyncio.run(run())
        assert alive.faults.served == 10 and dead.faults.received == 1


def test_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_vllm(FakeSettings(api_key="sekret")) as live:
        with pytest.raises(PolicyRequestError, match="HTTP 401"):
            complete(fast(live.url), TurnRequest(QUESTION, []))
        monkeypatch.setenv("VLLM_API_KEY", "sekret")
        assert complete(fast(live.url), TurnRequest(QUESTION, [])).completion_ids


def test_proxies_come_from_the_environment_as_httpx_takes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resolved once per server (aiohttp's own trust_env ignores ALL_PROXY and looks the
    environment up in a thread for every request); a SOCKS proxy is refused up front."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        for variant in (name, name.lower()):
            monkeypatch.delenv(variant, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "vllm")
    policy = fast(["http://vllm:8000", "http://other:8000"])
    assert [backend.proxy for backend in policy._backends] == [None, "http://proxy:3128"]
    monkeypatch.setenv("ALL_PROXY", "socks5://proxy:1080")
    with pytest.raises(RolloutConfigError, match="only http:// and https:// proxies"):
        fast("https://other:8000")


def completion_body() -> bytes:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": "hi"},
        "finish_reason": "stop",
        "logprobs": {"content": [{"token": "hi", "logprob": -0.5}]},
        "token_ids": [7],
    }
    return json.dumps({"model": "m", "choices": [choice], "prompt_token_ids": [1, 2]}).encode()


async def answer(writer: asyncio.StreamWriter) -> None:
    body = completion_body()
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()


async def read_request(reader: asyncio.StreamReader) -> None:
    head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
    await reader.readexactly(length)


def test_a_reused_connection_the_server_closed_is_retried() -> None:
    """The server closes a kept-alive connection just as the next request goes out on it
    (a keep-alive expiry race): nothing was answered, so the request is tried again."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await read_request(reader)
            await answer(writer)
            if connections == 1:
                await read_request(reader)  # the second request: closed without an answer
                return
            await reader.read()
        finally:
            writer.close()

    async def run() -> list[str]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        policy = fast(f"http://127.0.0.1:{port}")
        try:
            return [(await policy.complete(TurnRequest(QUESTION, []))).model for _ in range(2)]
        finally:
            await policy.aclose()
            server.close()

    assert asyncio.run(run()) == ["m", "m"]
    assert connections == 2


def test_in_flight_requests_are_counted_per_model_name(server: FakeServer) -> None:
    server.faults.delay_s = 0.3
    server.fake.adapters["policy-v2"] = "/adapters/v2"
    policy = fast(server.url)

    async def run() -> None:
        try:
            calls = [
                asyncio.create_task(policy.complete(TurnRequest(QUESTION, [], model=name)))
                for name in (DEFAULT_MODEL, DEFAULT_MODEL, "policy-v2")
            ]
            await asyncio.sleep(0.1)
            assert policy.requests_naming(DEFAULT_MODEL) == 2
            assert policy.requests_naming("policy-v2") == 1
            await asyncio.gather(*calls)
            assert policy.requests_naming(DEFAULT_MODEL) == policy.requests_naming("policy-v2") == 0
            with pytest.raises(PolicyRequestError):
                await policy.complete(TurnRequest(QUESTION, [], model="policy-v9"))
            assert policy.requests_naming("policy-v9") == 0  # a refusal is counted out too
        finally:
            await policy.aclose()

    asyncio.run(run())
