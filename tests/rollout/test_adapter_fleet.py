"""Publishing adapter versions to many vLLM servers: retries for a lagging shared filesystem,
servers that leave the rotation, the run stopping when none is left, unloading everywhere.

Real fake-vLLM servers under uvicorn on 127.0.0.1; the faults are real too: a directory that
appears late, a server started without runtime adapter routes, a server that is stopped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from _servers import FakeServer, fake_vllm, start_fake
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rollout.adapter_fleet import PublishRetry
from rollout.errors import AdapterError, AdapterTransientError, RolloutConfigError
from rollout.fake_vllm import DEFAULT_MODEL, FakeSettings, create_app
from rollout.openai_policy import OpenAIPolicy
from rollout.policy import SamplingParams, TurnRequest
from rollout.vllm import AdapterClient
from testkit import start_server

QUESTION = TurnRequest(
    [{"role": "user", "content": "What was the revenue?"}], [], SamplingParams(temperature=0.0)
)
LORA = FakeSettings(allow_runtime_lora=True)
FAST = PublishRetry(attempts=3, total_wait_s=0.3)  # waits of 0.1 and 0.2 s


def peft_dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    return path


def policy_on(*servers: FakeServer, retry: PublishRetry = FAST) -> OpenAIPolicy:
    return OpenAIPolicy([s.url for s in servers], DEFAULT_MODEL, publish_retry=retry, attempts=1)


async def models_on(url: str) -> list[str]:
    client = AdapterClient(url)
    try:
        return await client.list_models()
    finally:
        await client.aclose()


def test_publish_retry_waits_double_and_add_up_to_the_budget() -> None:
    assert PublishRetry().waits() == [2.0, 4.0, 8.0, 16.0]
    assert sum(PublishRetry(attempts=4, total_wait_s=7).waits()) == pytest.approx(7)
    assert PublishRetry(attempts=1).waits() == []
    with pytest.raises(RolloutConfigError, match="attempts >= 1"):
        PublishRetry(attempts=0)


def test_a_lagging_filesystem_is_retried_and_requests_wait_for_every_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The new directory shows up 0.6 s after publishing starts; rollouts keep playing the
    previous version meanwhile and never name the new one before both servers loaded it.
    Old code: the first 404 "No adapter found" raised AdapterError at once (no retry)."""

    async def appear_later(path: Path) -> None:
        await asyncio.sleep(0.6)
        peft_dir(path.parent, path.name)

    async def run(one: FakeServer, two: FakeServer) -> None:
        policy = policy_on(one, two, retry=PublishRetry(attempts=6, total_wait_s=6.0))
        try:
            await policy.publish_adapter(peft_dir(tmp_path, "v0001"), "v0001")
            late = tmp_path / "v0002"
            publishing = asyncio.create_task(policy.publish_adapter(late, "v0002"))
            appearing = asyncio.create_task(appear_later(late))
            during = []
            while not publishing.done():
                during.append((await policy.complete(QUESTION)).model)
                await asyncio.sleep(0.05)
            await publishing
            await appearing
            # v0001 until both servers serve v0002; then v0002 (the publish itself still waits
            # for v0001's last request before unloading it)
            switched = during.index("v0002") if "v0002" in during else len(during)
            assert during[:switched] and set(during[switched:]) <= {"v0002"}, during
            assert policy.model == "v0002"
            after = [(await policy.complete(QUESTION)).model for _ in range(4)]
            assert after == ["v0002"] * 4
            for server in (one, two):  # loaded on both, previous version unloaded on both
                assert await models_on(server.url) == [DEFAULT_MODEL, "v0002"]
        finally:
            await policy.aclose()

    with fake_vllm(LORA) as one, fake_vllm(LORA) as two:
        asyncio.run(run(one, two))
        for server in (one, two):
            assert server.fake.load_attempts["v0002"] >= 2  # it did fail at first, then loaded
            assert server.faults.received == server.faults.served >= 3  # no request refused
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("trouble", ["no adapter routes", "stopped"])
def test_a_server_that_cannot_load_leaves_the_rotation_and_rollouts_go_on(
    trouble: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Old code: the publish raised AdapterError for the bad server and the run stopped."""

    async def run(good: FakeServer, bad: FakeServer) -> None:
        policy = policy_on(good, bad)
        try:
            await policy.publish_adapter(peft_dir(tmp_path, "v0001"), "v0001")
            assert policy.base_urls == [good.url]
            turns = [await policy.complete(QUESTION) for _ in range(6)]
            assert {turn.model for turn in turns} == {"v0001"}
            await policy.publish_adapter(peft_dir(tmp_path, "v0002"), "v0002")
            assert (await policy.complete(QUESTION)).model == "v0002"
        finally:
            await policy.aclose()

    settings = FakeSettings() if trouble == "no adapter routes" else LORA
    with fake_vllm(LORA) as good, fake_vllm(settings) as bad:
        if trouble == "stopped":
            bad.stop()
        asyncio.run(run(good, bad))
        assert good.faults.served == 7 and bad.faults.received == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1, lines  # one line, once: a dropped server is not asked again
    assert f"policy server {bad.url} taken out of rotation" in lines[0]
    assert "'v0001'" in lines[0] and "(1 server(s) left)" in lines[0]
    why = "has no /v1/load_lora_adapter route" if trouble != "stopped" else "cannot reach"
    assert why in lines[0]
    if trouble == "stopped":
        assert "after 3 attempt(s) over 0.3 s" in lines[0]


def test_no_server_left_stops_the_run_with_every_reason(tmp_path: Path) -> None:
    """Old code: the AdapterError named the first server only, and never retried."""

    async def run(one: FakeServer, two: FakeServer) -> None:
        policy = policy_on(one, two)
        try:
            await policy.publish_adapter(peft_dir(tmp_path, "v0001"), "v0001")
            with pytest.raises(AdapterError) as info:
                await policy.publish_adapter(tmp_path / "never-written", "v0002")
            message = str(info.value)
            assert "\n" not in message and "could not be loaded on any policy server" in message
            assert message.count("No adapter found") == 2
            assert one.url in message and two.url in message
            assert policy.model == "v0001"  # never routed to a version no server has
        finally:
            await policy.aclose()

    with fake_vllm(LORA) as one, fake_vllm(LORA) as two:
        asyncio.run(run(one, two))
        assert one.fake.load_attempts["v0002"] == two.fake.load_attempts["v0002"] == 3


def test_an_unload_failure_only_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def run(one: FakeServer, two: FakeServer) -> None:
        policy = policy_on(one, two)
        client = AdapterClient(two.url)
        try:
            await policy.publish_adapter(peft_dir(tmp_path, "v0001"), "v0001")
            await client.unload("v0001")  # someone else already took it away on one server
            await policy.publish_adapter(peft_dir(tmp_path, "v0002"), "v0002")
            assert policy.base_urls == [one.url, two.url]  # still in rotation
            for url in policy.base_urls:
                assert await models_on(url) == [DEFAULT_MODEL, "v0002"]
        finally:
            await client.aclose()
            await policy.aclose()

    with fake_vllm(LORA) as one, fake_vllm(LORA) as two:
        asyncio.run(run(one, two))
    err = capsys.readouterr().err
    assert f"previous adapter 'v0001' stays loaded on {two.url}" in err and "cannot be found" in err


def test_the_client_tells_a_lagging_directory_from_a_missing_route(tmp_path: Path) -> None:
    async def load(url: str) -> AdapterError:
        client = AdapterClient(url)
        try:
            with pytest.raises(AdapterError) as info:
                await client.load("v1", tmp_path / "not-yet")
            return info.value
        finally:
            await client.aclose()

    with fake_vllm(LORA) as lora:
        lagging = asyncio.run(load(lora.url))
    plain = start_fake()
    try:
        routeless = asyncio.run(load(plain.url))
    finally:
        plain.stop()
    assert isinstance(lagging, AdapterTransientError) and "HTTP 404" in str(lagging)
    assert not isinstance(routeless, AdapterTransientError)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1" in str(routeless)


def test_a_name_the_server_kept_from_before_is_reloaded_with_the_new_weights(
    tmp_path: Path,
) -> None:
    """A resumed run (or another run) publishes a version name the server still holds: the
    server refuses a plain load of a known name, so the weights at the new path are loaded in
    place. Old code: the refusal dropped the server, and with one server stopped the run."""

    async def run(server: FakeServer) -> None:
        earlier = OpenAIPolicy(server.url, DEFAULT_MODEL, publish_retry=FAST)
        try:
            await earlier.publish_adapter(peft_dir(tmp_path / "earlier", "v0002"), "v0002")
        finally:
            await earlier.aclose()
        resumed = policy_on(server)
        try:
            fresh = peft_dir(tmp_path / "resumed", "v0002")
            await resumed.publish_adapter(fresh, "v0002")
            assert server.fake.adapters["v0002"] == str(fresh.resolve())
            assert (await resumed.complete(QUESTION)).model == "v0002"
        finally:
            await resumed.aclose()

    with fake_vllm(LORA) as server:
        asyncio.run(run(server))


class SlowCompletions:
    """The fake vLLM with each chat completion held `delay_s` before the server reads its
    model name, and a log of completions answered and adapters unloaded, in order."""

    def __init__(self, app: ASGIApp, delay_s: float) -> None:
        self.app = app
        self.delay_s = delay_s
        self.arrived = threading.Event()
        self.log: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path == "/v1/chat/completions":
            self.arrived.set()
            await asyncio.sleep(self.delay_s)

            async def logged(message: Message) -> None:
                if message["type"] == "http.response.start":  # before the client can see it
                    self.log.append("completion")
                await send(message)

            await self.app(scope, receive, logged)
        elif path == "/v1/unload_lora_adapter":
            self.log.append("unload")
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def test_the_previous_version_is_unloaded_only_after_its_requests_finish(tmp_path: Path) -> None:
    """A request naming v0001 is in flight (held 0.5 s before the server reads its model) while
    v0002 is published. Old code: the publish unloaded v0001 at once, and the held request
    got a 404 "The model `v0001` does not exist" (a PolicyRequestError)."""
    app = create_app(LORA)
    slow = SlowCompletions(app, delay_s=0.5)
    server = FakeServer(start_server(slow), app.state.fake)

    async def run() -> None:
        policy = policy_on(server)
        try:
            await policy.publish_adapter(peft_dir(tmp_path, "v0001"), "v0001")
            request = asyncio.create_task(policy.complete(QUESTION))
            await asyncio.to_thread(slow.arrived.wait, 5)  # on the server, not yet answered
            assert policy.requests_naming("v0001") == 1
            await policy.publish_adapter(peft_dir(tmp_path, "v0002"), "v0002")
            assert request.done() and (await request).model == "v0001"
            assert policy.requests_naming("v0001") == 0
            assert (await policy.complete(QUESTION)).model == "v0002"
            assert await models_on(server.url) == [DEFAULT_MODEL, "v0002"]
        finally:
            await policy.aclose()

    try:
        asyncio.run(run())
    finally:
        server.stop()
    assert slow.log == ["completion", "unload", "completion"]


def test_a_publish_with_nothing_in_flight_unloads_at_once(tmp_path: Path) -> None:
    async def run(server: FakeServer) -> float:
        policy = policy_on(server)
        try:
            await policy.publish_adapter(peft_dir(tmp_path, "v0001"), "v0001")
            await policy.complete(QUESTION)
            started = time.perf_counter()
            await policy.publish_adapter(peft_dir(tmp_path, "v0002"), "v0002")
            return time.perf_counter() - started
        finally:
            await policy.aclose()

    with fake_vllm(LORA) as server:
        assert asyncio.run(run(server)) < 2.0
        assert list(server.fake.adapters) == ["v0002"]
