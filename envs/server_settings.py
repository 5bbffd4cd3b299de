"""`ServerSettings`: how an environment reaches its tool server, checked once.

One record for every way an environment is declared (gym.make kwargs, a YAML registration),
so a setting that cannot work fails in one line where the environment is made, with the same
words either way. `envs.client.open_tool_client` turns it into a client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from envs.errors import EnvConfigError
from envs.replicas import parse_urls
from envs.stdio import StdioCommand

TRANSPORTS = ("http", "mcp", "stdio")
ISOLATIONS = ("pool", "episode")


@dataclass(frozen=True)
class ServerSettings:
    """How an environment reaches its tools, checked once when the environment is made: a
    setting that cannot work fails `gym.make` (or loading a YAML file) in one line, not the
    first episode of a run."""

    transport: str = "http"
    tools_urls: tuple[str, ...] = ()  # http/mcp: one server, or several replicas of it
    headers: tuple[tuple[str, str], ...] = ()  # mcp: sent on every request
    stdio: StdioCommand | None = None  # stdio: the server's command, env and cwd
    isolation: str = "pool"  # pool: one server/session shared; episode: a fresh one per reset
    tools: tuple[str, ...] | None = None  # offer only these

    @classmethod
    def of(
        cls,
        transport: str = "http",
        tools_url: str | Sequence[str] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        isolation: str = "pool",
        tools: Sequence[str] | None = None,
        need_url: bool = True,
    ) -> ServerSettings:
        """The checked settings; EnvConfigError names the first problem in one line.
        `tools_url` is one URL or several replicas of the same server (a list, or a
        comma-separated string). `need_url=False` leaves a missing tools_url to
        `open_tool_client` (an in-process app, or a caller that fails later in its own order,
        may stand in for it)."""
        if transport not in TRANSPORTS:
            raise EnvConfigError(
                f"unknown tool transport {transport!r}: use {', '.join(map(repr, TRANSPORTS))}"
            )
        if isolation not in ISOLATIONS:
            raise EnvConfigError(f"isolation: {isolation!r} is not one of {', '.join(ISOLATIONS)}")
        stdio = _check_endpoint(transport, tools_url, command, env, cwd, need_url)
        urls = parse_urls(tools_url)
        _check_headers(transport, headers)
        if isolation == "episode" and transport == "http":
            raise EnvConfigError("isolation: episode needs an MCP transport (mcp or stdio)")
        if tools is not None and (isinstance(tools, str) or not tools):
            raise EnvConfigError("tools: expected a non-empty list of tool names")
        return cls(
            transport,
            urls,
            tuple((headers or {}).items()),
            stdio,
            isolation,
            tuple(tools) if tools is not None else None,
        )


def _check_endpoint(
    transport: str,
    tools_url: str | Sequence[str] | None,
    command: Sequence[str] | None,
    env: Mapping[str, str] | None,
    cwd: str | Path | None,
    need_url: bool,
) -> StdioCommand | None:
    """Where the server is: a URL for http/mcp, a command for stdio, never both."""
    if transport == "stdio":
        if tools_url:
            raise EnvConfigError("transport stdio starts its server from command: drop tools_url")
        return StdioCommand.of(command, env, cwd)
    given = [name for name, value in (("command", command), ("env", env), ("cwd", cwd)) if value]
    if given:
        raise EnvConfigError(f"{', '.join(given)}: only for transport stdio, not {transport}")
    if not parse_urls(tools_url) and need_url:
        raise EnvConfigError(no_server(transport))
    return None


def no_server(transport: str) -> str:
    return (
        f"no tool server: pass tools_url=URL (tools_url: Field required with transport "
        f"{transport}), or an ASGI app in-process"
    )


def _check_headers(transport: str, headers: Mapping[str, str] | None) -> None:
    if not headers:
        return
    if transport != "mcp":
        raise EnvConfigError(f"headers: only for transport mcp, not {transport}")
    if any(name.lower() == "authorization" for name in headers):
        raise EnvConfigError(
            "headers: Authorization is not set here; name the variable holding the token "
            "with token_env"
        )
    bad = [repr(v) for pair in headers.items() for v in pair if not isinstance(v, str)]
    if bad:
        raise EnvConfigError(f"headers: names and values must be strings, not {bad[0]}")
