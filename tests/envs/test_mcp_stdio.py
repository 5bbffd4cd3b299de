"""Any stdio MCP server as an environment, with the npm reference servers run for real.

server-memory keeps a knowledge graph in a file: its MEMORY_FILE_PATH points into
`{session_dir}`, the scratch directory each server process gets, so `isolation: episode`
(a process per reset) really starts every episode on an empty graph, and `pool` (one process
for every environment of the loop) shares one. Process starts are counted by a shell wrapper
that writes each server's pid to a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

import envs
from envs.client import AnnotatedTools, RetryPolicy, make_tool_client
from envs.errors import EnvConfigError, ToolServerUnavailableError
from envs.mcp_client import McpStdioClient
from envs.tool_env import ToolEnv
from mcpkit import (
    ANSWER,
    call,
    counted,
    needs_node,
    pid_alive,
    server_command,
    started_pids,
    write_env,
)

pytestmark = [needs_node, pytest.mark.usefixtures("forget_new_envs")]

MEMORY_ENV = {"MEMORY_FILE_PATH": "{session_dir}/memory.jsonl"}
ADA = {"entities": [{"name": "Ada", "entityType": "person", "observations": ["wrote code"]}]}


def memory_env(folder: Path, env_id: str, isolation: str) -> str:
    command = counted(server_command("memory"), folder / "starts")
    path = write_env(
        folder, env_id, transport="stdio", command=command, env=MEMORY_ENV, isolation=isolation
    )
    return envs.register_yaml(path)


def make(env_id: str) -> ToolEnv:
    env = gym.make(env_id, disable_env_checker=True).unwrapped
    assert isinstance(env, ToolEnv)
    return env


def tool_names(info: dict[str, Any]) -> list[str]:
    return [spec["function"]["name"] for spec in info["tools"]]


def test_memory_server_tools_are_offered_and_episodes_play(tmp_path: Path) -> None:
    env = make(memory_env(tmp_path, "acme/Memory-v0", "pool"))
    try:
        _, info = env.reset(seed=0)
        assert {"create_entities", "read_graph", "search_nodes"} <= set(tool_names(info))
        observation, *_ = env.step(call("create_entities", ADA))
        assert '"name": "Ada"' in observation[0]["content"]
        observation, *_ = env.step(call("read_graph", call_id="c2"))
        assert "Ada" in observation[0]["content"]
        _, reward, terminated, _, _ = env.step(ANSWER)
        assert terminated and reward == 1.0
        assert env.record.infra_error is None
    finally:
        env.close()


def test_isolation_episode_starts_each_reset_on_a_fresh_server(tmp_path: Path) -> None:
    env = make(memory_env(tmp_path, "acme/MemoryEpisode-v0", "episode"))
    try:
        env.reset(seed=0)
        env.step(call("create_entities", ADA))
        env.reset(seed=1)
        observation, *_ = env.step(call("read_graph"))
        assert "Ada" not in observation[0]["content"]
        assert '"entities": []' in observation[0]["content"]
        first, second = started_pids(tmp_path / "starts")
        assert not pid_alive(first)  # stopped at the next reset
    finally:
        env.close()
    assert not pid_alive(second)  # and the last one at close


def test_isolation_pool_shares_one_server_among_the_loops_environments(tmp_path: Path) -> None:
    env_id = memory_env(tmp_path, "acme/MemoryPool-v0", "pool")

    async def play() -> str:
        many = [make(env_id) for _ in range(3)]
        try:
            for i, env in enumerate(many):
                await env.areset(seed=i)
            await many[0].astep(call("create_entities", ADA))
            observation, *_ = await many[2].astep(call("read_graph"))
            await many[1].areset(seed=9)  # a new episode on the same shared server
            again, *_ = await many[1].astep(call("search_nodes", {"query": "Ada"}))
            return str(observation[0]["content"]) + str(again[0]["content"])
        finally:
            for env in many:
                await env.aclose()

    seen = asyncio.run(play())
    assert seen.count('"name": "Ada"') == 2
    pids = started_pids(tmp_path / "starts")
    assert len(pids) == 1  # one process for three environments
    assert not pid_alive(pids[0])  # stopped with the last of them


def test_tools_limits_what_is_offered_and_refuses_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    (root / "a.txt").write_text("alpha")
    path = write_env(
        tmp_path,
        "acme/Files-v0",
        transport="stdio",
        command=server_command("filesystem", str(root)),
        tools=["read_text_file", "list_directory"],
    )
    env = make(envs.register_yaml(path))
    try:
        _, info = env.reset(seed=0)
        assert tool_names(info) == ["read_text_file", "list_directory"]
        written = str(root / "b.txt")
        observation, *_ = env.step(call("write_file", {"path": written, "content": "x"}))
        assert observation[0]["content"] == (
            "Error: unknown tool 'write_file'. Tools: read_text_file, list_directory."
        )
        assert not (root / "b.txt").exists()
        observation, *_ = env.step(call("read_text_file", {"path": str(root / "a.txt")}, "c2"))
        assert observation[0]["content"] == "alpha"
        assert [c.ok for c in env.record.calls] == [False, True]
    finally:
        env.close()


def test_server_everything_over_stdio_renders_each_content_type(tmp_path: Path) -> None:
    path = write_env(
        tmp_path, "acme/Everything-v0", transport="stdio", command=server_command("everything")
    )
    env = make(envs.register_yaml(path))
    try:
        env.reset(seed=0)
        outputs = []
        calls: list[tuple[str, dict[str, Any]]] = [
            ("get-tiny-image", {}),
            ("get-resource-links", {"count": 2}),
            ("get-resource-reference", {"resourceType": "Blob", "resourceId": 2}),
            ("get-resource-reference", {"resourceType": "Text", "resourceId": 1}),
            ("get-structured-content", {"location": "Chicago"}),
            ("get-sum", {"a": 1, "b": "two"}),
        ]
        for i, (name, arguments) in enumerate(calls):
            observation, *_ = env.step(call(name, arguments, f"c{i}"))
            outputs.append(observation[0]["content"])
        flags = [c.ok for c in env.record.calls]
    finally:
        env.close()
    image, links, blob, text, structured, bad_sum = outputs
    lines = image.splitlines()
    assert lines[0] == "Here's the image you requested:"
    assert lines[1].startswith("[image image/png, ") and lines[1].endswith(" KB]")
    assert links.splitlines()[1:] == [
        "[resource link: demo://resource/dynamic/blob/1 (Blob Resource 1)]",
        "[resource link: demo://resource/dynamic/text/2 (Text Resource 2)]",
    ]
    assert blob.splitlines()[1].startswith("[resource demo://resource/dynamic/blob/2 text/plain, ")
    assert text.splitlines()[1].startswith("Resource 1: This is a plaintext resource")
    assert '"conditions"' in structured
    assert "expected number" in bad_sum
    assert flags == [True, True, True, True, True, False]  # the server's is_error, kept


def test_a_killed_server_ends_the_episode_as_infra_and_the_next_reset_recovers(
    tmp_path: Path,
) -> None:
    env = make(memory_env(tmp_path, "acme/MemoryKilled-v0", "pool"))
    try:
        env.reset(seed=0)
        env.step(call("read_graph"))
        (pid,) = started_pids(tmp_path / "starts")
        os.kill(pid, signal.SIGKILL)
        _, reward, terminated, truncated, _ = env.step(call("read_graph", call_id="c2"))
        record = env.record
        assert record.infra_error and "MCP server `sh -c" in record.infra_error
        assert record.grade is None and truncated and not terminated and reward == 0.0
        env.reset(seed=1)
        observation, *_ = env.step(call("read_graph"))
        assert '"entities"' in observation[0]["content"]
        assert len(started_pids(tmp_path / "starts")) == 2
    finally:
        env.close()


BOOM = [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"]


@pytest.mark.parametrize(
    ("command", "fragments"),
    [
        (["/nonexistent/mcp-server", "--flag"], ["/nonexistent/mcp-server --flag", "No such file"]),
        (BOOM, [f"MCP server `{sys.executable} -c", "sys.exit(3)", "its stderr ends: boom"]),
    ],
    ids=["no-such-command", "exits-at-start"],
)
def test_a_server_that_cannot_start_is_one_line_naming_command_and_stderr(
    tmp_path: Path, command: list[str], fragments: list[str]
) -> None:
    path = write_env(tmp_path, "acme/Broken-v0", transport="stdio", command=command)
    env = make(envs.register_yaml(path))
    try:
        with pytest.raises(ToolServerUnavailableError) as caught:
            env.reset(seed=0)
    finally:
        env.close()
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"transport": "stdio"}, "transport stdio needs command: [program, arg, ...]"),
        ({"transport": "stdio", "command": "node x.js"}, "command: Input should be a valid list"),
        (
            {"transport": "stdio", "command": ["x"], "tools_url": "http://127.0.0.1:1"},
            "drop tools_url",
        ),
        ({"transport": "stdio", "command": ["x"], "token_env": "ACME"}, "gets no token"),
        ({"transport": "mcp", "command": ["x"], "tools_url": "http://h"}, "only for transport"),
        ({"transport": "mcp"}, "tools_url: Field required with transport mcp"),
        (
            {"transport": "mcp", "tools_url": "http://h", "headers": {"authorization": "x"}},
            "Authorization is not set here; name the variable holding the token with token_env",
        ),
        ({"tools_url": "http://h", "headers": {"X-A": "1"}}, "headers: only for transport mcp"),
        ({"tools_url": "http://h", "isolation": "episode"}, "needs an MCP transport"),
        ({"transport": "stdio", "command": ["x"], "isolation": "never"}, "isolation"),
    ],
)
def test_settings_that_cannot_work_are_one_line_at_load(
    tmp_path: Path, spec: dict[str, Any], fragment: str
) -> None:
    path = write_env(tmp_path, "acme/Bad-v0", **spec)
    with pytest.raises(EnvConfigError) as caught:
        envs.register_yaml(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert fragment in message


def test_a_tool_the_server_lacks_is_named_at_the_first_reset(tmp_path: Path) -> None:
    path = write_env(
        tmp_path,
        "acme/MissingTool-v0",
        transport="stdio",
        command=server_command("memory"),
        env=MEMORY_ENV,
        tools=["read_graph", "drop_database"],
    )
    env = make(envs.register_yaml(path))
    try:
        with pytest.raises(EnvConfigError) as caught:
            env.reset(seed=0)
    finally:
        env.close()
    message = str(caught.value)
    assert "\n" not in message
    assert "the server has no 'drop_database'" in message
    assert "create_entities" in message and "read_graph" in message  # what it does have


REPORTER = '''
import json, os, time
from mcp.server.mcpserver import MCPServer

server = MCPServer(name="reporter", log_level="WARNING")


@server.tool()
def environment() -> str:
    """This process's environment variable names, working directory and scratch directory."""
    scratch = os.environ.get("ACME_SCRATCH", "")
    return json.dumps(
        {"names": sorted(os.environ), "cwd": os.getcwd(), "scratch": scratch,
         "scratch_is_dir": os.path.isdir(scratch)}
    )


@server.tool()
def hang() -> str:
    """Never answers in time."""
    time.sleep(60)
    return "late"


server.run("stdio")
'''


@pytest.fixture
def reporter(tmp_path: Path) -> list[str]:
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)
    return [sys.executable, str(script)]


@pytest.mark.parametrize("made_by", ["yaml", "builtin-kwargs"])
def test_a_stdio_server_gets_only_the_safe_environment_and_its_own_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reporter: list[str], made_by: str
) -> None:
    """TOOL_BEARER is set, and the built-in ids even name it as their token_env: a stdio
    server still never sees it, nor any other variable of ours."""
    monkeypatch.setenv("TOOL_BEARER", "toolgym-own-secret")
    monkeypatch.setenv("ACME_PRIVATE", "not-for-servers")
    (tmp_path / "work").mkdir()
    settings: dict[str, Any] = {
        "transport": "stdio",
        "command": reporter,
        "env": {"ACME_MODE": "test", "ACME_SCRATCH": "{session_dir}"},
    }
    if made_by == "yaml":
        path = write_env(tmp_path, "acme/Reporter-v0", cwd="work", **settings)  # file-relative
        env = make(envs.register_yaml(path))
    else:
        rows = write_env(tmp_path, "acme/Unused-v0").parent / "rows.jsonl"
        made = gym.make(
            "toolgym/FilingsQA-v0", dataset=str(rows), cwd=str(tmp_path / "work"), **settings
        )
        env = made.unwrapped  # type: ignore[assignment]
    try:
        env.reset(seed=0)
        observation, *_ = env.step(call("environment"))
    finally:
        env.close()
    seen = json.loads(observation[0]["content"])
    assert "TOOL_BEARER" not in seen["names"] and "ACME_PRIVATE" not in seen["names"]
    assert {"ACME_MODE", "ACME_SCRATCH", "PATH"} <= set(seen["names"])
    assert seen["cwd"] == str(tmp_path / "work")
    assert seen["scratch_is_dir"] and "{session_dir}" not in seen["scratch"]


def test_a_call_to_a_server_that_does_not_answer_ends_within_the_timeout(
    reporter: list[str],
) -> None:
    async def play() -> tuple[float, str, bool]:
        client = make_tool_client(
            None, transport="stdio", command=reporter, retry=RetryPolicy(timeout_s=1.0)
        )
        try:
            await client.begin_episode()  # the process starts here, not on the clock below
            started, problem = time.monotonic(), ""
            try:
                await client.call("hang", {}, "c1")
            except ToolServerUnavailableError as exc:
                problem = str(exc)
            took = time.monotonic() - started
            await client.begin_episode()  # the server itself still answers: the session goes on
            answered = not (await client.call("environment", {}, "c2")).is_error
            return took, problem, answered
        finally:
            await client.aclose()

    took, problem, answered = asyncio.run(play())
    assert took < 8  # the call gives up after about 1 s (8: a busy machine's slack)
    assert "the call to hang failed" in problem and "\n" not in problem
    assert answered


def test_toolgyms_own_tools_are_annotated_read_only(small_corpus: Path) -> None:
    from toolservers.index import SearchMode, build_index

    build_index(small_corpus, search=SearchMode.LEXICAL, progress=False)
    toolgym = str(Path(sys.executable).with_name("toolgym"))
    serve = [toolgym, "serve", "--corpus", str(small_corpus), "--transport", "stdio"]

    async def read() -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        client = make_tool_client(None, transport="stdio", command=serve)
        assert isinstance(client, McpStdioClient)
        try:
            return await client.annotations(), await client.specs()
        finally:
            await client.aclose()

    annotations, specs = asyncio.run(read())
    read_only = {"readOnlyHint": True, "destructiveHint": False, "openWorldHint": False}
    assert annotations == {"search": read_only, "list": read_only, "read": read_only}
    assert all(set(spec) == {"type", "function"} for spec in specs)  # none in the specs
    assert "annotations" not in str(specs) and "readOnlyHint" not in str(specs)


def test_annotations_of_a_third_party_server_narrowed_by_tools(tmp_path: Path) -> None:
    command = server_command("filesystem", str(tmp_path))

    async def read() -> dict[str, dict[str, Any]]:
        client = make_tool_client(
            None, transport="stdio", command=command, tools=["list_directory", "write_file"]
        )
        assert isinstance(client, AnnotatedTools)
        try:
            return await client.annotations()
        finally:
            await client.aclose()

    annotations = asyncio.run(read())
    assert set(annotations) == {"list_directory", "write_file"}
    assert annotations["list_directory"]["readOnlyHint"] is True
    assert annotations["write_file"]["readOnlyHint"] is False
    assert annotations["write_file"]["destructiveHint"] is True
