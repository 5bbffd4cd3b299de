"""PolicySpec and open_policy: every spelling, one timeout default, devices, adapter publishing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from _servers import fake_vllm

from rollout import cli as rollout_cli
from rollout import evaluate
from rollout.engine import RolloutResult
from rollout.errors import RolloutConfigError
from rollout.fake_vllm import DEFAULT_MODEL, FakeSettings
from rollout.local_policy import LocalPolicy
from rollout.openai_policy import OpenAIPolicy
from rollout.policy import DEFAULT_REQUEST_TIMEOUT_S, Policy, SamplingParams, TurnRequest
from rollout.policy_spec import LocalSpec, ServerSpec, open_policy, parse_policy
from rollout.summary import summarize
from rollout.vllm import AdapterClient
from trainer.cli import build_parser
from trainer.config import PolicySettings, TrainConfig
from trainer.train import make_policy

URL = "http://127.0.0.1:8000/v1"
QUESTION = TurnRequest(
    [{"role": "user", "content": "What was the revenue?"}], [], SamplingParams(temperature=0.0)
)


def peft_dir(root: Path, name: str = "adapter") -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    return path


# ----------------------------------------------------------------- parsing


def test_local_spellings(tmp_path: Path) -> None:
    adapter = peft_dir(tmp_path)
    assert parse_policy(str(tmp_path)) == LocalSpec(tmp_path, None, "cpu")
    assert parse_policy(f"{tmp_path}+{adapter}", device="cuda:1") == LocalSpec(
        tmp_path, adapter, "cuda:1"
    )


@pytest.mark.parametrize(
    ("text", "name", "urls"),
    [
        (f"Qwen/Qwen2.5-3B-Instruct@{URL}", "Qwen/Qwen2.5-3B-Instruct", ("http://127.0.0.1:8000",)),
        ("v0020@https://a:1/v1/", "v0020", ("https://a:1",)),
        ("v1@http://a:1/v1,http://b:2", "v1", ("http://a:1", "http://b:2")),
    ],
)
def test_server_spellings(text: str, name: str, urls: tuple[str, ...]) -> None:
    assert parse_policy(text) == ServerSpec(name, urls, DEFAULT_REQUEST_TIMEOUT_S)
    assert parse_policy(text, request_timeout_s=7.0) == ServerSpec(name, urls, 7.0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("no/such/dir", "is not a model directory; use MODEL_DIR, MODEL_DIR+ADAPTER_DIR"),
        ("{dir}+{dir}/missing", "is not a PEFT adapter directory"),
        (f"@{URL}", "the model NAME before '@' is missing"),
        ("m@ftp://host/v1", "must start with http:// or https://"),
        (f"m@{URL},ftp://x", "must start with http:// or https://"),
    ],
)
def test_bad_spellings_fail_in_one_line(text: str, problem: str, tmp_path: Path) -> None:
    with pytest.raises(RolloutConfigError) as caught:
        parse_policy(text.format(dir=tmp_path))
    message = str(caught.value)
    assert message.startswith("policy '") and problem in message and "\n" not in message


def rollout_args(*argv: str) -> Any:
    return build_parser().parse_args(["rollout", "--out", "x.jsonl", *argv])


def test_rollout_options_keep_their_spellings(tmp_path: Path) -> None:
    adapter = peft_dir(tmp_path)
    local = rollout_args("--policy", "local", "--model", str(tmp_path), "--adapter", str(adapter))
    assert rollout_cli.policy_spec(local) == LocalSpec(tmp_path, adapter, "cpu")
    on_gpu = rollout_args("--policy", "local", "--model", str(tmp_path), "--device", "cuda")
    assert rollout_cli.policy_spec(on_gpu) == LocalSpec(tmp_path, None, "cuda")
    served = rollout_args("--base-url", URL, "--base-url", "http://b:1", "--model", "m")
    assert rollout_cli.policy_spec(served) == ServerSpec(
        "m", (URL, "http://b:1"), DEFAULT_REQUEST_TIMEOUT_S
    )
    with pytest.raises(RolloutConfigError, match="--base-url is required"):
        rollout_cli.policy_spec(rollout_args("--model", "m"))
    with pytest.raises(RolloutConfigError, match="--base-url is for --policy vllm"):
        rollout_cli.policy_spec(
            rollout_args("--policy", "local", "--model", "m", "--base-url", URL)
        )


# ----------------------------------------------------------------- the factory


def test_remote_policy_uses_the_one_timeout_default(tmp_path: Path) -> None:
    async def built_timeouts() -> list[float]:
        policies = [
            open_policy(parse_policy(f"m@{URL}")),
            open_policy(rollout_cli.policy_spec(rollout_args("--base-url", URL, "--model", "m"))),
            make_policy(TrainConfig(base_model="m", policy=PolicySettings(backend="vllm",
                                                                         base_urls=[URL]))),
        ]  # fmt: skip
        timeouts = [p.timeout_s for p in policies if isinstance(p, OpenAIPolicy)]
        for policy in policies:
            await policy.aclose()
        return timeouts

    assert asyncio.run(built_timeouts()) == [DEFAULT_REQUEST_TIMEOUT_S] * 3


def test_eval_device_reaches_the_local_policy(
    tiny_policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices: list[str] = []

    async def record(
        rows: Any, factory: Any, policy: Policy, *args: Any, **kwargs: Any
    ) -> RolloutResult:
        assert isinstance(policy, LocalPolicy)
        devices.append(str(next(policy.hf_model.parameters()).device))
        return RolloutResult(trajectories=[], summary=summarize([]))

    class NoPool:  # eval needs rows and an aclose from its pool; no episode is played here
        def __init__(self) -> None:
            self.rows: list[Any] = []

        def factory(self) -> None:
            return None

        async def aclose(self) -> None:
            return None

    monkeypatch.setattr(evaluate, "run_rollouts", record)
    monkeypatch.setattr(evaluate, "EnvPool", lambda *a, **k: NoPool())
    argv = ["eval", "--base", str(tiny_policy_dir), "--tuned", str(tiny_policy_dir),
            "--device", "cpu", "--out", str(tmp_path / "eval"), "--no-progress"]  # fmt: skip
    asyncio.run(evaluate.run_eval(rollout_cli.eval_request(build_parser().parse_args(argv))))
    assert devices == ["cpu", "cpu"]


# ----------------------------------------------------------------- publishing adapters


def test_local_policy_publishes_an_adapter_in_place(
    tiny_policy_dir: Path, tiny_lora_adapter_dir: Path
) -> None:
    async def run() -> None:
        policy = open_policy(LocalSpec(tiny_policy_dir))
        try:
            base = await policy.complete(QUESTION)
            await policy.publish_adapter(tiny_lora_adapter_dir, "v0001")
            tuned = await policy.complete(QUESTION)
            assert policy.model == tuned.model == "v0001"
            assert tuned.logprobs != pytest.approx(base.logprobs, abs=1e-3)
            await policy.publish_adapter(tiny_lora_adapter_dir, "v0002")
            assert isinstance(policy, LocalPolicy) and policy.adapters == ["v0002"]
            assert (await policy.complete(QUESTION)).model == "v0002"
        finally:
            await policy.aclose()

    asyncio.run(run())


def test_remote_policy_publishes_on_every_server(tmp_path: Path) -> None:
    async def run(urls: list[str]) -> None:
        policy = open_policy(ServerSpec(DEFAULT_MODEL, tuple(urls)))
        clients = [AdapterClient(url) for url in urls]
        try:
            for version in ("v0001", "v0002"):
                await policy.publish_adapter(peft_dir(tmp_path, version), version)
                assert policy.model == version
                for client in clients:
                    assert await client.list_models() == [DEFAULT_MODEL, version]
            assert (await policy.complete(QUESTION)).model == "v0002"
        finally:
            await policy.aclose()
            for client in clients:
                await client.aclose()

    settings = FakeSettings(allow_runtime_lora=True)
    with fake_vllm(settings) as one, fake_vllm(settings) as two:
        asyncio.run(run([one.url, two.url]))


def test_remote_adapters_are_read_where_the_server_sees_them(tmp_path: Path) -> None:
    mounted = tmp_path / "server-view"
    peft_dir(mounted, "v0001")

    async def run(url: str) -> None:
        spec = ServerSpec(DEFAULT_MODEL, (url,), adapter_dir_on_server=mounted)
        policy = open_policy(spec)
        try:  # the trainer's path does not exist for the server; the mounted one does
            await policy.publish_adapter(tmp_path / "trainer-view" / "v0001", "v0001")
            assert policy.model == "v0001"
        finally:
            await policy.aclose()

    with fake_vllm(FakeSettings(allow_runtime_lora=True)) as live:
        asyncio.run(run(live.url))
