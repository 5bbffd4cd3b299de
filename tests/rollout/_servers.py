"""Fake vLLM servers under a real uvicorn on 127.0.0.1, for the rollout tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rollout.fake_vllm import FakeSettings, FakeVllm, FaultController, create_app
from testkit import LiveServer, free_port, start_server

__all__ = ["FakeServer", "fake_vllm", "free_port", "start_fake"]


@dataclass
class FakeServer:
    live: LiveServer
    fake: FakeVllm

    @property
    def url(self) -> str:
        return self.live.url

    @property
    def faults(self) -> FaultController:
        return self.fake.faults

    def stop(self) -> None:
        self.live.stop()


def start_fake(settings: FakeSettings | None = None) -> FakeServer:
    app = create_app(settings)
    return FakeServer(start_server(app), app.state.fake)


@contextmanager
def fake_vllm(settings: FakeSettings | None = None) -> Iterator[FakeServer]:
    server = start_fake(settings)
    try:
        yield server
    finally:
        server.stop()
