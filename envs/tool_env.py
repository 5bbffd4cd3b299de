"""`ToolEnv`: a Gymnasium environment over an `Episode`, with a sync and an async face.

    obs, info = env.reset(seed=0, options={"row_id": "val-0042"})
    obs, reward, terminated, truncated, info = env.step(assistant_message)

Observations are lists of chat messages (the opening conversation, then tool results); the
action is one assistant message. `areset`/`astep` are the same episode for the rollout engine,
which runs many environments in one event loop. The sync methods run that same code on a
private event loop, so there is one copy of the rules.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from envs.client import ToolClient, first_token, open_tool_client
from envs.episode import (
    DEFAULT_SYSTEM_PROMPT,
    Episode,
    EpisodeGrader,
    Limits,
    approximate_tokens,
    parse_limits,
)
from envs.errors import EnvConfigError
from envs.record import EpisodeRecord
from envs.server_settings import ServerSettings
from envs.spaces import AssistantActions, ChatMessages

if TYPE_CHECKING:
    from envs.data.rows import Row


class ToolEnv(gym.Env[list[dict[str, Any]], Any]):
    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012  (Gymnasium style)

    def __init__(
        self,
        rows: Sequence[Row],
        grader: EpisodeGrader,
        client_factory: Callable[[], ToolClient],
        *,
        limits: Limits | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        count_tokens: Callable[[str], int] = approximate_tokens,
        render_mode: str | None = None,
    ) -> None:
        if not rows:
            raise EnvConfigError("the environment needs at least one dataset row")
        self.rows = list(rows)
        self._by_id = {row.id: row for row in self.rows}
        self.grader = grader
        # A factory defers creating the client to the event loop that will use it: httpx
        # connection pools are bound to one loop.
        self._client_factory = client_factory
        self._client: ToolClient | None = None
        self.limits = limits or Limits()
        self.system_prompt = system_prompt
        self.count_tokens = count_tokens
        self.render_mode = render_mode
        self.observation_space = ChatMessages()
        self.action_space = AssistantActions()
        self.episode: Episode | None = None
        self._loop: asyncio.Runner | None = None

    # ---- async face (the rollout engine) ----

    @property
    def client(self) -> ToolClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def pick_row(self, options: dict[str, Any] | None) -> Row:
        wanted = (options or {}).get("row_id")
        if wanted is not None:
            if wanted not in self._by_id:
                raise EnvConfigError(f"no row with id {wanted!r} in this environment's dataset")
            return self._by_id[wanted]
        return self.rows[int(self.np_random.integers(len(self.rows)))]

    async def areset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        gym.Env.reset(self, seed=seed)
        row = self.pick_row(options)
        await self.client.begin_episode()  # a fresh MCP session or server, when configured
        tools = list(row.tools) or await self.client.specs()
        self.episode = Episode(
            row,
            row.prompt,
            self.client,
            self.grader,
            self.limits,
            self.system_prompt,
            self.count_tokens,
            tools=tools,
        )
        return self.episode.opening(), self.episode.record.as_info(with_tools=True)

    @property
    def record(self) -> EpisodeRecord:
        """The current episode so far (tools offered, calls, answer, grade, errors), frozen."""
        if self.episode is None:
            raise gym.error.ResetNeeded("call reset() before reading the episode record")
        return self.episode.record

    async def astep(
        self, action: Any
    ) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        if self.episode is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        outcome = await self.episode.step(action)
        return (
            outcome.observation,
            outcome.reward,
            outcome.terminated,
            outcome.truncated,
            outcome.info,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # ---- sync face (Gymnasium) ----

    def _run(self, coroutine: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.Runner()
        return self._loop.run(coroutine)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return self._run(self.areset(seed=seed, options=options))

    def step(self, action: Any) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        return self._run(self.astep(action))

    def render(self) -> str | None:
        if self.episode is None:
            return None
        return "\n".join(
            f"[{m['role']}] {m.get('content') or json.dumps(m.get('tool_calls'))}"
            for m in self.episode.state.messages
        )

    def close(self) -> None:
        """Close the sync face; async users call `aclose()` on their own loop instead."""
        if self._loop is not None:
            self._loop.run(self.aclose())
            self._loop.close()
            self._loop = None


def load_dataset_rows(dataset: str | Path | Sequence[Row]) -> list[Row]:
    """Rows from a JSONL path, or already-loaded rows passed through."""
    from envs.data.rows import load_rows

    if isinstance(dataset, str | Path):
        return list(load_rows(Path(dataset)))
    return list(dataset)


def make_tool_env(
    dataset: str | Path | Sequence[Row],
    tools_url: str | Sequence[str] | None = None,
    token: str | None = None,
    *,
    token_env: str | None = None,
    transport: str = "http",
    asgi_app: Any = None,
    headers: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    isolation: str = "pool",
    tools: Sequence[str] | None = None,
    grader: EpisodeGrader | dict[str, Any] | None = None,
    limits: Limits | dict[str, Any] | None = None,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    render_mode: str | None = None,
) -> ToolEnv:
    """The entry point behind the registered ids: kwargs in, a ready environment out.

    The tool server is a URL (`transport` http or mcp, with `headers` for mcp), several
    replicas of one (a list of URLs, or one comma-separated string: see `envs.replicas`), or a
    stdio MCP server started from `command` (with `env` and `cwd`); `isolation` and `tools` are
    described in `envs.server_settings.ServerSettings`. They are checked here, so a setting
    that cannot work fails now rather than in the first episode.

    The tool server sees `token` if given, else the first token in the variable `token_env`
    (the built-in ids name TOOL_BEARER; the variable is read now, once), else no
    Authorization header at all; every replica gets the same. Nothing is read by default: a
    plugin registering this entry point without `token_env` must not receive toolgym's own
    token. A stdio server never receives a token.
    """
    from envs.grading import episode_grader

    settings = ServerSettings.of(
        transport,
        tools_url,
        headers=headers,
        command=command,
        env=env,
        cwd=cwd,
        isolation=isolation,
        tools=tools,
        need_url=False,  # a missing URL fails the first reset, as it always has
    )
    if transport == "stdio":
        token = None
    elif not token and token_env:
        token = first_token(token_env)
    rows = load_dataset_rows(dataset)
    return ToolEnv(
        rows,
        episode_grader(grader),
        lambda: open_tool_client(settings, token, asgi_app=asgi_app),
        limits=parse_limits(limits),
        system_prompt=system_prompt,
        render_mode=render_mode,
    )
