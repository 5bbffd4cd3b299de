"""The demo's tool servers: `python -m toolservers serve` over HTTP and MCP, each in its own
process.

They run as separate processes, as they would in production, so every tool call the demo
makes crosses a real socket with the bearer token, which each server reads from TOOL_BEARER in
its own environment. `python -m toolservers` is `toolgym serve` without envs, rollout or
trainer: a server process loads only the tool servers. Their logs go to files; a server that
dies while starting fails the demo with the tail of its log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from trainer.errors import TrainerError

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class ToolServers:
    """Start both servers on enter, stop them on exit (also on errors and Ctrl-C)."""

    def __init__(
        self,
        corpus: Path,
        token: str,
        logs: Path,
        *,
        http_port: int = 0,
        mcp_port: int = 0,
        read_budget: int | None = None,
    ) -> None:
        self.corpus, self.token, self.logs = corpus, token, logs
        self.http_port = http_port or free_port()
        self.mcp_port = mcp_port or free_port()
        self.read_budget = read_budget
        self._processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def mcp_url(self) -> str:
        return f"http://{HOST}:{self.mcp_port}/mcp"

    def _command(self, transport: str, port: int) -> list[str]:
        command = [sys.executable, "-m", "toolservers", "serve", "--corpus", str(self.corpus)]
        command += ["--transport", transport, "--host", HOST, "--port", str(port)]
        if self.read_budget:
            command += ["--read-budget", str(self.read_budget)]
        return command

    def __enter__(self) -> ToolServers:
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TOOL_BEARER": self.token}
        for transport, port in (("http", self.http_port), ("mcp", self.mcp_port)):
            log = self.logs / f"tools-{transport}.log"
            with log.open("wb") as handle:
                process = subprocess.Popen(
                    self._command(transport, port), stdout=handle, stderr=subprocess.STDOUT, env=env
                )
            self._processes.append((transport, process, log))
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_up(self) -> None:
        """Up = answering HTTP: /health on the HTTP server, 401 without a token on /mcp."""
        probes = {"http": f"{self.http_url}/health", "mcp": self.mcp_url}
        waiting = {name for name, _, _ in self._processes}
        deadline = time.monotonic() + START_TIMEOUT_S
        while waiting:
            for name, process, log in self._processes:
                if process.poll() is not None:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise TrainerError(f"the {name} tool server exited while starting:\n{tail}")
                if name in waiting:
                    try:
                        httpx.get(probes[name], timeout=2.0)
                        waiting.discard(name)
                    except httpx.TransportError:
                        pass
            if time.monotonic() > deadline:
                raise TrainerError(f"tool servers not up after {START_TIMEOUT_S:.0f}s: {waiting}")
            time.sleep(0.25)

    def stop(self) -> None:
        for _, process, _ in self._processes:
            if process.poll() is None:
                process.terminate()
        for _, process, _ in self._processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
