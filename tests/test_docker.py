"""The tool-server image: built by docker/build.sh, run with a token, called from the host.

Needs a Docker engine (`bash docker/ensure-engine.sh` starts one; `make test` runs it first).
Without one every test here is skipped, saying why. The image is built once for the module;
with nothing changed since the last build, docker/build.sh takes seconds (all layers cached).
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from testkit import Died, WaitFailed, Watch, answers_health, wait_until

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
IMAGE = os.environ.get("TOOLGYM_TEST_IMAGE", "toolgym/tools:latest")
BUILD_TIMEOUT_S = 1800  # cold: wheel download + debootstrap + install, a few minutes
# The module's first test also pays for the image build (its fixture's setup counts).
pytestmark = [pytest.mark.docker, pytest.mark.timeout(BUILD_TIMEOUT_S + 600)]
START_TIMEOUT_S = 120  # the server loads torch, the model and the index before listening
HEALTHCHECK_TIMEOUT_S = 90  # the image's first HEALTHCHECK runs 30 s (its interval) after start
HIT = re.compile(r"filings/\S+\.html \(score ")
SEARCH = {
    "arguments": {"query": "Henderson Industries Q3 2025 operating margin", "top_k": 3},
    "call_id": "c1",
}
MCP_SERVE = ["python", "-m", "toolservers", "serve", "--corpus", "/data/corpus"]
MCP_SERVE += ["--transport", "mcp"]
MCP_SERVE += ["--host", "0.0.0.0", "--port", "8081"]
MCP_HEALTH = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/health')"
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def docker(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def engine_missing() -> str | None:
    """Why no engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "no docker client on PATH (bash docker/ensure-engine.sh installs one)"
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0 or not info.stdout.strip():
        return "no Docker engine answers (bash docker/ensure-engine.sh starts one, as root)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def logs(name: str) -> str:
    result = docker("logs", "--tail", "40", name)
    return (result.stdout + result.stderr)[-4000:]


def container_alive(name: str) -> Watch:
    def watch() -> None:
        state = docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state not in ("created", "running"):
            raise Died(f"container {name} is {state or 'gone'!r}")

    return watch


def wait_for_health(name: str, base_url: str) -> None:
    try:
        wait_until(
            lambda: answers_health(base_url),
            what=f"container {name} to answer /health",
            alive=container_alive(name),
            timeout_s=START_TIMEOUT_S,
            interval_s=0.5,
        )
    except WaitFailed as failed:  # dead or silent: either way its log says why
        raise WaitFailed(f"{failed}; its log:\n{logs(name)}") from failed


@contextmanager
def container(
    image: str, token: str, port: int, command: Sequence[str] = (), options: Sequence[str] = ()
) -> Iterator[tuple[str, str]]:
    """Run `image` with TOOL_BEARER=token and `port` published on 127.0.0.1; always removed."""
    name = f"toolgym-test-{secrets.token_hex(4)}"
    host_port = free_port()
    try:
        # The token goes through the environment, not the command line (`ps` shows that).
        run = docker(
            "run", "--detach", "--name", name, "--env", "TOOL_BEARER",
            "--publish", f"127.0.0.1:{host_port}:{port}", *options, image, *command,
            env={**os.environ, "TOOL_BEARER": token},
        )  # fmt: skip
        if run.returncode != 0:
            pytest.fail(f"docker run failed: {run.stderr.strip()}")
        base_url = f"http://127.0.0.1:{host_port}"
        wait_for_health(name, base_url)
        yield name, base_url
    finally:
        docker("rm", "--force", "--volumes", name)


@pytest.fixture(scope="module")
def image() -> str:
    reason = engine_missing()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    build = subprocess.run(
        ["bash", str(DOCKER_DIR / "build.sh")],
        cwd=ROOT,
        env={**os.environ, "IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    if build.returncode != 0:
        pytest.fail(f"docker/build.sh failed:\n{(build.stdout + build.stderr)[-6000:]}")
    print(f"\n{IMAGE} built in {time.monotonic() - started:.0f}s")
    return IMAGE


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def http_server(image: str, token: str) -> Iterator[tuple[str, str]]:
    # A short health interval, so the image's own HEALTHCHECK gets exercised within the test.
    with container(image, token, 8080, options=["--health-interval", "2s"]) as server:
        yield server


@pytest.fixture(scope="module")
def mcp_server(image: str, token: str) -> Iterator[tuple[str, str]]:
    options = ["--health-cmd", f'python -c "{MCP_HEALTH}"', "--health-interval", "2s"]
    with container(image, token, 8081, command=MCP_SERVE, options=options) as server:
        yield server


def test_search_with_the_token_finds_filings(http_server: tuple[str, str], token: str) -> None:
    _, url = http_server
    response = httpx.post(
        f"{url}/search", json=SEARCH, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["call_id"] == "c1"
    assert HIT.search(body["output"]), body["output"]


def test_search_without_a_token_is_refused(http_server: tuple[str, str]) -> None:
    _, url = http_server
    response = httpx.post(f"{url}/search", json=SEARCH, timeout=30)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "filings/" not in response.text


def test_search_with_a_wrong_token_is_refused(http_server: tuple[str, str], token: str) -> None:
    _, url = http_server
    wrong = {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}
    response = httpx.post(f"{url}/search", json=SEARCH, headers=wrong, timeout=30)
    assert response.status_code == 401
    assert token not in response.text


def test_health_is_open_and_reports_the_bundled_index(http_server: tuple[str, str]) -> None:
    _, url = http_server
    health = httpx.get(f"{url}/health", timeout=30).json()
    assert health["status"] == "ok"
    assert health["documents"] > 0
    assert health["search"] == "hybrid"


def test_image_healthcheck_turns_healthy(http_server: tuple[str, str]) -> None:
    name, _ = http_server
    status = ""

    def healthy() -> bool:
        nonlocal status
        status = docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
        return status == "healthy"

    try:
        wait_until(
            healthy,
            what=f"HEALTHCHECK of {name} to pass",
            alive=container_alive(name),
            timeout_s=HEALTHCHECK_TIMEOUT_S,
            interval_s=1,
        )
    except WaitFailed as failed:
        raise WaitFailed(f"{failed}; last status {status!r}; its log:\n{logs(name)}") from failed


def test_server_runs_as_non_root_on_read_only_data(http_server: tuple[str, str]) -> None:
    name, _ = http_server
    assert docker("exec", name, "id", "-u").stdout.strip() != "0"
    touch = docker("exec", name, "touch", "/data/corpus/written-by-server")
    assert touch.returncode != 0


def test_refuses_to_start_without_a_token(image: str) -> None:
    run = docker("run", "--rm", image, timeout=120)  # no --env TOOL_BEARER
    assert run.returncode != 0
    assert "no token configured" in run.stderr


def test_mcp_health_is_open_and_mcp_needs_the_token(
    mcp_server: tuple[str, str], token: str
) -> None:
    _, url = mcp_server
    health = httpx.get(f"{url}/health", timeout=30)
    assert health.status_code == 200
    assert health.json()["transport"] == "mcp"

    refused = httpx.post(f"{url}/mcp", json=TOOLS_LIST, headers=MCP_HEADERS, timeout=30)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")

    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    listed = httpx.post(f"{url}/mcp", json=TOOLS_LIST, headers=headers, timeout=30)
    assert listed.status_code == 200, listed.text
    names = {tool["name"] for tool in listed.json()["result"]["tools"]}
    assert {"search", "list", "read"} <= names


def compose_command() -> list[str] | None:
    if shutil.which("docker") and docker("compose", "version", timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_publishes_both_services_on_loopback_only(tmp_path: Path) -> None:
    spec = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())
    services = spec["services"]
    assert set(services) == {"tools-http", "tools-mcp"}
    for name, service in services.items():
        assert service["env_file"] == ".env", name
        assert service["restart"] in ("unless-stopped", "always"), name
        assert service["healthcheck"]["test"], name
        for mapping in service["ports"]:
            assert mapping.startswith("127.0.0.1:"), (name, mapping)
    assert "mcp" in services["tools-mcp"]["command"]

    compose = compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    # Validate with the real tool, against a throwaway .env beside a copy of the file.
    shutil.copy(DOCKER_DIR / "compose.yaml", tmp_path / "compose.yaml")
    (tmp_path / ".env").write_text(f"TOOL_BEARER={secrets.token_urlsafe(32)}\n")
    check = subprocess.run(
        [*compose, "-f", str(tmp_path / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr


def _episode_rows(folder: Path) -> Path:
    row = {
        "id": "r1",
        "prompt": "What was Henderson Industries' Q3 2025 operating margin?",
        "reference_answer": "13.4%",
        "metadata": {"task_type": "numerical_qa", "difficulty": "easy"},
    }
    path = folder / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


def _play(env: Any) -> dict[str, Any]:
    """One episode: a search, then an answer; the final info."""
    env.reset(seed=0)
    function = {"name": "search", "arguments": json.dumps(SEARCH["arguments"])}
    tool_call = {"id": "c0", "type": "function", "function": function}
    env.step({"role": "assistant", "content": "", "tool_calls": [tool_call]})
    *_, info = env.step({"role": "assistant", "content": "Answer: 13.4%"})
    return dict(info)


def test_compose_scales_each_transport_and_an_env_uses_every_replica(
    image: str, token: str, tmp_path: Path
) -> None:
    from envs.replicas import shared_replicas
    from envs.tool_env import make_tool_env

    compose = compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    shutil.copy(DOCKER_DIR / "compose.yaml", tmp_path / "compose.yaml")
    (tmp_path / ".env").write_text(f"TOOL_BEARER={token}\n")
    project = f"toolgym-test-{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "TOOLGYM_IMAGE": image,
        "TOOLGYM_HTTP_PORT": "",  # empty: Docker picks a free loopback port per replica
        "TOOLGYM_MCP_PORT": "",
        "COMPOSE_FILE": str(tmp_path / "compose.yaml"),
        "COMPOSE_PROJECT_NAME": project,
    }
    command = [*compose, "-f", env["COMPOSE_FILE"], "-p", project]
    try:
        up = subprocess.run(
            [*command, "up", "-d", "--scale", "tools-http=2", "--scale", "tools-mcp=2"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        urls = {}
        for service in ("tools-http", "tools-mcp"):
            listed = subprocess.run(
                ["bash", str(DOCKER_DIR / "replica-urls.sh"), service],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            urls[service] = listed.stdout.strip().split(",")
            assert len(set(urls[service])) == 2, listed.stdout
            for url in urls[service]:
                base = url.removesuffix("/mcp")
                wait_until(
                    functools.partial(answers_health, base),
                    what=f"{service} replica {base} to answer /health",
                    timeout_s=START_TIMEOUT_S,
                    interval_s=0.5,
                )
        rows = _episode_rows(tmp_path)
        for transport, service in (("http", "tools-http"), ("mcp", "tools-mcp")):
            # mcp: a session per episode, so one environment's episodes visit both replicas
            isolation = "episode" if transport == "mcp" else "pool"
            tool_env = make_tool_env(
                rows, urls[service], token, transport=transport, isolation=isolation
            )
            try:
                for _ in range(4):
                    info = _play(tool_env)
                    assert info["infra_error"] is None, info["infra_error"]
                    assert info["tool_calls"][0]["ok"], info["tool_calls"]
                # The balancing state every client of these URLs shares: answers per replica.
                replicas = shared_replicas(transport, urls[service]).snapshot()
                served = {url: replica.served for url, replica in replicas.items()}
            finally:
                tool_env.close()
            assert set(served) == set(urls[service])
            assert all(count >= 1 for count in served.values()), (service, served)
    finally:
        subprocess.run(
            [*command, "down", "--volumes", "--remove-orphans"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
