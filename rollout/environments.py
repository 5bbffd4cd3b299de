"""Make the engine's environments from a registered id, the dataset loaded once.

Every worker needs its own environment (an environment holds one episode at a time), and each
keeps its own tool client: one keep-alive connection (or MCP session) per worker. A shared
client would not save connections and costs more: httpx's pool scans every connection for
every request. The one exception is a stdio MCP server with `isolation: pool`, a process the
environments of one event loop share (envs.stdio).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

import envs  # noqa: F401  (registers the built-in and plugin environments)
from envs.data.rows import Row
from envs.errors import EnvConfigError
from rollout.errors import RolloutConfigError
from rollout.play import AsyncToolEnv


class EnvPool:
    """Rows of the environment's dataset and a factory of environments over them."""

    def __init__(
        self,
        env_id: str,
        *,
        dataset: Path | list[Row] | None = None,
        tools_url: str | Sequence[str] | None = None,  # one server or its replicas
        token: str | None = None,
        transport: str | None = None,
        asgi_app: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if env_id not in gym.registry:
            known = ", ".join(sorted(e for e in gym.registry if e.startswith("toolgym/")))
            raise RolloutConfigError(
                f"no environment {env_id!r} is registered (known: {known}); see `toolgym envs list`"
            )
        registered = gym.registry[env_id]
        if dataset is None and not _has_dataset(registered.entry_point, registered.kwargs, extra):
            raise RolloutConfigError(
                f"{env_id} has no dataset of its own: pass --dataset ROWS.jsonl "
                "(see `toolgym data build`)"
            )
        self.env_id = env_id
        self.kwargs: dict[str, Any] = dict(extra or {})
        for key, value in (
            ("dataset", str(dataset) if isinstance(dataset, Path) else dataset),
            ("tools_url", tools_url),
            ("token", token),
            ("transport", transport),
            ("asgi_app", asgi_app),
        ):
            if value is not None:
                self.kwargs[key] = value
        first = self._make()
        self.rows: list[Row] = list(first.rows)
        check_rows_env(env_id, self.rows)
        self.kwargs["dataset"] = self.rows  # later environments reuse the loaded rows
        self._spare: list[AsyncToolEnv] = [first]

    def _make(self) -> AsyncToolEnv:
        try:
            env = gym.make(self.env_id, disable_env_checker=True, **self.kwargs).unwrapped
        except (TypeError, EnvConfigError) as exc:
            raise RolloutConfigError(f"cannot make {self.env_id}: {exc}") from None
        # Looked up on the class or the instance's own attributes, without calling anything: on
        # a fresh ToolEnv the `record` property raises ResetNeeded.
        needed = ("areset", "astep", "aclose", "rows", "record")
        missing = [n for n in needed if not hasattr(type(env), n) and n not in vars(env)]
        if missing:
            raise RolloutConfigError(
                f"{self.env_id} is not a toolgym environment (it lacks {', '.join(missing)}; "
                "it needs areset/astep/aclose/rows/record)"
            )
        return env  # type: ignore[return-value]

    def factory(self) -> Callable[[], AsyncToolEnv]:
        def make() -> AsyncToolEnv:
            return self._spare.pop() if self._spare else self._make()

        return make

    async def aclose(self) -> None:
        """Close the spare environment (the engine closes the ones it took)."""
        while self._spare:
            await self._spare.pop().aclose()


def check_rows_env(env_id: str, rows: list[Row]) -> None:
    """Rows `toolgym tasks generate` wrote name the environment whose tool server they were
    written from (`metadata.env_id`); played in another environment they ask about tools and
    data it does not have, and every reward would be noise. Refused in one line."""
    others = sorted({str(r.metadata.extra("env_id")) for r in rows if _foreign(r, env_id)})
    if others:
        count = sum(1 for r in rows if _foreign(r, env_id))
        raise RolloutConfigError(
            f"{count} of {len(rows)} rows were generated for {', '.join(others)} "
            f"(metadata.env_id), not for {env_id}: play them in the environment they came from "
            "(--env; environment.id in a train config), or remove metadata.env_id from the rows "
            "to play them here anyway"
        )


def _foreign(row: Row, env_id: str) -> bool:
    generated_for = row.metadata.extra("env_id")
    return generated_for is not None and generated_for != env_id


def _has_dataset(entry_point: Any, registered: Any, extra: dict[str, Any] | None) -> bool:
    """Whether an environment made by toolgym's own entry point gets its rows from somewhere;
    others (a plugin's class) may not need a dataset at all, so they are taken at their word."""
    if entry_point != "envs.tool_env:make_tool_env":
        return True
    return "dataset" in (registered or {}) or "dataset" in (extra or {})


def sample_rows(rows: list[Row], n: int | None, seed: int) -> list[Row]:
    """K rows drawn with the seed (all rows when n is None), in their dataset order."""
    if n is None or n >= len(rows):
        return list(rows)
    chosen = set(random.Random(seed).sample(range(len(rows)), n))
    return [row for i, row in enumerate(rows) if i in chosen]


def labelled_rows(rows: list[Row], verb: str) -> list[Row]:
    """The rows whose success the environment's grader can measure: those with a reference
    answer (generated tasks may have none; a RULER judge scores those in training). None at all
    is a one-line error, before a policy is opened."""
    labelled = [row for row in rows if row.reference_answer is not None]
    if rows and not labelled:
        raise RolloutConfigError(
            f"none of the {len(rows)} rows has a reference_answer: {verb} measures success with "
            "the environment's grader, which needs one (rows without one are scored by a RULER "
            "judge in training: reward: {grader: 0, ruler: {judge: NAME@URL}})"
        )
    return labelled
