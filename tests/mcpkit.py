"""Third-party MCP servers for the tests: the npm reference servers in tests/mcp_servers/
(installed from its lock by `make mcp-servers`), run for real over stdio or streamable HTTP.

Node: the lock carries Node 20 itself (the `node-linux-*` packages, a binary inside a registry
package), because Debian bookworm's nodejs is 18, on which server-everything's streamable HTTP
transport fails. The system's `node` is the fallback on other platforms.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testkit import free_port, process_alive, wait_until

SERVERS_DIR = Path(__file__).parent / "mcp_servers"
MODULES = SERVERS_DIR / "node_modules"
_LOCKED_NODE = MODULES / ".bin" / "node"


def node_binary() -> str | None:
    if _LOCKED_NODE.exists():
        return str(_LOCKED_NODE)
    return shutil.which("node")


NODE = node_binary()
needs_node = pytest.mark.skipif(
    NODE is None, reason="node is not installed (`make mcp-servers` installs it with the servers)"
)


def server_script(name: str) -> str:
    """The entry script of @modelcontextprotocol/server-<name>; a failure (not a skip) when node
    is there but the servers were not installed: `make test` installs them."""
    script = MODULES / "@modelcontextprotocol" / f"server-{name}" / "dist" / "index.js"
    assert script.exists(), f"{script} is missing: run `make mcp-servers`"
    return str(script)


def server_command(name: str, *args: str) -> list[str]:
    assert NODE is not None
    return [NODE, server_script(name), *args]


def counted(command: list[str], starts: Path) -> list[str]:
    """`command` behind a shell that appends its pid to `starts` first (then execs it, so the
    pid is the server's): how many processes were started, and which one to kill."""
    line = 'echo $$ >> "$0"; exec "$@"'
    return ["sh", "-c", line, str(starts), *command]


def started_pids(starts: Path) -> list[int]:
    return [int(x) for x in starts.read_text().split()] if starts.exists() else []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); its state says it is gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def write_rows(folder: Path) -> Path:
    path = folder / "rows.jsonl"
    row = {
        "id": "r1",
        "prompt": "Use the tools.",
        "reference_answer": "42",
        "metadata": {"task_type": "lookup", "difficulty": "easy"},
    }
    path.write_text(json.dumps(row) + "\n")
    return path


def write_env(folder: Path, env_id: str, **spec: Any) -> Path:
    """An environment file in `folder` (JSON is YAML) over rows of its own."""
    path = folder / f"{env_id.split('/')[-1]}.yaml"
    path.write_text(json.dumps({"id": env_id, "dataset": str(write_rows(folder)), **spec}))
    return path


def call(name: str, arguments: dict[str, Any] | None = None, call_id: str = "c1") -> dict[str, Any]:
    """An assistant message calling one tool."""
    function = {"name": name, "arguments": json.dumps(arguments or {})}
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }


ANSWER = {"role": "assistant", "content": "Answer: 42"}


@dataclass
class HttpEverything:
    """server-everything over streamable HTTP on a port of its own; `restart` keeps the port.
    It listens on every interface (Node's default; it has no host setting): the tests reach
    it at 127.0.0.1 only."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        log = self.folder / f"everything-{self.port}.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                server_command("everything", "streamableHttp"),
                env={**os.environ, "PORT": str(self.port)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            self.accepts,
            what=f"server-everything on port {self.port}",
            alive=process_alive(self.process, name="server-everything", log=log),
            timeout_s=30,
        )

    def accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


def everything_over_http(folder: Path) -> Iterator[HttpEverything]:
    server = HttpEverything(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
