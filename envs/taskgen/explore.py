"""Discover an environment's tools and explore them: read-only calls, observed and recorded.

Which tools may be called is decided once, from the MCP annotations, before any call: a tool
is called only when it says `readOnlyHint: true`, unless the caller allows writes, and then
also tools that say otherwise or nothing (MCP reads a missing hint as "may write"). A server
that cannot say (toolgym's HTTP contract has no annotations) therefore offers nothing to call
without `--allow-writes`, which is the safe reading of silence.

Calls go round the callable tools in seeded rounds (tools without required arguments first:
they tend to list what the others take), each with arguments made from its schema and from
values earlier outputs mentioned (envs.taskgen.arguments), never the same call twice, until
the call budget is spent or no tool has a new call to make; a tool that fails six times in a
row leaves the rotation (what there is to give it does not suit it). Resources the server lists are
read too (they are read-only by definition) within the same budget.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from envs.client import AnnotatedTools, ResourceReader, ToolClient, ToolOutput
from envs.errors import ToolInfraError
from envs.taskgen.arguments import ArgumentMaker, ValuePool, schema_problem
from envs.taskgen.records import RESOURCE_TOOL, Observation, ToolInfo

MAX_OBSERVATION_CHARS = 20_000  # kept per observation; a prompt shows less (generate.py)
MAX_RESOURCES = 10
NEW_CALL_TRIES = 6  # argument draws per tool and round before it is left for the round
MAX_ERRORS_IN_A_ROW = 6  # a tool failing this often in a row leaves the rotation


async def discover_tools(
    client: ToolClient, *, allow_writes: bool, warn: Callable[[str], None]
) -> list[ToolInfo]:
    """Every tool the client offers, with its annotations and, for those exploration will
    not call, why. A tool whose input schema is unusable is skipped with one warning line."""
    annotations = await client.annotations() if isinstance(client, AnnotatedTools) else {}
    tools = []
    for spec in await client.specs():
        function = spec.get("function", {})
        name = str(function.get("name", ""))
        notes = annotations.get(name, {})
        hint = notes.get("readOnlyHint")
        schema = function.get("parameters", {})
        problem = schema_problem(schema)
        info = ToolInfo(
            name=name,
            description=str(function.get("description") or ""),
            input_schema=schema if problem is None else {},
            read_only=hint if isinstance(hint, bool) else None,
            annotations=notes,
        )
        if problem is not None:
            info.skipped = f"invalid input schema: {problem}"
            warn(f"warning: tool {name!r} skipped: {problem}")
        elif info.read_only is not True and not allow_writes:
            said = "readOnlyHint false" if info.read_only is False else "no readOnlyHint"
            info.skipped = f"may write ({said}); pass --allow-writes to call it"
        tools.append(info)
    return tools


def stderr_warning(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass
class Explorer:
    """Seeded exploration of `tools` through `client` within `budget` calls."""

    client: ToolClient
    tools: list[ToolInfo]
    budget: int
    seed: int = 0
    progress: bool = True
    observations: list[Observation] = field(default_factory=list)
    infra_errors: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.pool = ValuePool()
        self.maker = ArgumentMaker(self.pool, self.rng)
        self._made: set[str] = set()
        self._failed_in_a_row: dict[str, int] = {}

    @property
    def callable(self) -> list[ToolInfo]:
        return [tool for tool in self.tools if tool.skipped is None]

    async def run(self) -> list[Observation]:
        bar = tqdm(
            total=self.budget, desc="explore", unit="call", disable=None if self.progress else True
        )
        try:
            await self._read_resources(bar)
            await self._call_rounds(bar)
        finally:
            bar.close()
        return self.observations

    async def _read_resources(self, bar: Any) -> None:
        if not isinstance(self.client, ResourceReader):
            return
        listed = await self.client.resources()
        for resource in listed[: min(MAX_RESOURCES, self.budget // 4)]:
            output = await self.client.read_resource(resource.uri)
            self._record(RESOURCE_TOOL, {"uri": resource.uri}, output)
            bar.update(1)

    async def _call_rounds(self, bar: Any) -> None:
        # Reads before writes in every round (with --allow-writes), no-argument tools first.
        order = sorted(
            self.callable, key=lambda t: (t.read_only is not True, bool(_required(t)), t.name)
        )
        active = list(order)
        while active and len(self.observations) < self.budget:
            round_tools = list(active)
            head = [t for t in round_tools if not _required(t)]
            rest = [t for t in round_tools if _required(t)]
            self.rng.shuffle(rest)
            for tool in head + sorted(rest, key=lambda t: t.read_only is not True):
                if len(self.observations) >= self.budget:
                    return
                arguments = self._new_arguments(tool)
                if arguments is None:
                    active.remove(tool)  # nothing new to ask it
                    continue
                output = await self._call(tool.name, arguments)
                self.maker.outcome(not output.is_error)
                self._record(tool.name, arguments, output)
                bar.update(1)
                failures = self._failed_in_a_row[tool.name] = (
                    self._failed_in_a_row.get(tool.name, 0) + 1 if output.is_error else 0
                )
                if failures >= MAX_ERRORS_IN_A_ROW:
                    active.remove(tool)  # it keeps refusing what there is to give it

    def _new_arguments(self, tool: ToolInfo) -> dict[str, Any] | None:
        tries = NEW_CALL_TRIES if tool.input_schema.get("properties") else 1
        for _ in range(tries):
            arguments = self.maker.arguments(tool.name, tool.input_schema)
            key = f"{tool.name} {json.dumps(arguments, sort_keys=True, default=str)}"
            if key not in self._made:
                self._made.add(key)
                return arguments
        return None

    async def _call(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        call_id = f"explore-{len(self.observations) + 1}"
        try:
            return await self.client.call(name, arguments, call_id)
        except ToolInfraError as exc:
            # One broken call is an observation; a server that stays down fails the reopen.
            self.infra_errors += 1
            await self.client.begin_episode()
            return ToolOutput(f"Error: infrastructure failure: {exc}", is_error=True)

    def _record(self, tool: str, arguments: dict[str, Any], output: ToolOutput) -> None:
        observation = Observation(
            id=f"o{len(self.observations) + 1}",
            tool=tool,
            arguments=arguments,
            text=output.text[:MAX_OBSERVATION_CHARS],
            is_error=output.is_error,
        )
        self.observations.append(observation)
        if not output.is_error:
            self.pool.harvest(output.text[:MAX_OBSERVATION_CHARS], arguments)


def _required(tool: ToolInfo) -> list[str]:
    return list(tool.input_schema.get("required") or [])
