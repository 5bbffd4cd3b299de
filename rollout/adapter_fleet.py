"""Publish each new adapter version to every vLLM server of a policy, or take a server out.

Rollouts are balanced over all servers, so a version must be loaded on each of them before any
request names it: the loads run concurrently and the policy routes to the new name only once
they are all done. A load the server may still complete later (its view of a shared filesystem
lags, it is briefly unreachable, it answers 5xx) is retried with growing waits inside a bounded
budget; a server that still cannot load the version is dropped from the rotation with one line
on stderr saying why, and the run stops (AdapterError) when no server is left. The previous
version is unloaded everywhere only once the policy no longer has requests naming it in flight
(`OpenAIPolicy.publish_adapter` sequences load, switch, drain, unload); an unload that fails
only warns, since a stale adapter costs memory on the server, not correctness.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rollout.errors import AdapterError, AdapterTransientError, RolloutConfigError
from rollout.vllm import AdapterClient

Report = Callable[[str], None]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class PublishRetry:
    """How long one server may take to see a new adapter: `attempts` loads in all, separated by
    waits that double and add up to `total_wait_s` (5 and 30 s: waits of 2, 4, 8 and 16 s)."""

    attempts: int = 5
    total_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.total_wait_s < 0:
            raise RolloutConfigError(
                f"adapter publishing needs attempts >= 1 and a total wait >= 0 s, not "
                f"{self.attempts} attempts and {self.total_wait_s:g} s"
            )

    def waits(self) -> list[float]:
        gaps = self.attempts - 1
        if not gaps:
            return []
        first = self.total_wait_s / (2**gaps - 1)
        return [first * 2**index for index in range(gaps)]


@dataclass(frozen=True)
class LoadOutcome:
    url: str
    problem: str | None = None  # why the server could not load the version; None: loaded


def one_line(text: str) -> str:
    """Server messages may span lines; a drop notice and the final error must not."""
    return " ".join(text.split())


def warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


class AdapterFleet:
    """The adapter clients of a policy's servers, and which of them are still in rotation."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        api_key: str | None = None,
        retry: PublishRetry | None = None,
        report: Report = warn,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._clients = {url: AdapterClient(url, api_key=api_key) for url in urls}
        self.retry = retry or PublishRetry()
        self._report = report
        self._sleep = sleep
        self.dropped: dict[str, str] = {}  # url -> why it left the rotation
        self.published: str | None = None

    @property
    def active(self) -> list[str]:
        return [url for url in self._clients if url not in self.dropped]

    async def load(self, path: Path, version: str) -> list[str]:
        """Load `version` from `path` on every active server at once; returns the servers that
        serve it (the others are dropped), and it becomes `published`. AdapterError when none
        can. The previous version stays loaded: see `unload`."""
        outcomes = await asyncio.gather(*(self._load(url, path, version) for url in self.active))
        for outcome in outcomes:
            if outcome.problem is not None:
                self._drop(outcome.url, version, outcome.problem)
        if not self.active:  # every server has now said why (this time or before)
            reasons = "; ".join(f"{url}: {why}" for url, why in self.dropped.items())
            raise AdapterError(
                f"adapter {version!r} could not be loaded on any policy server, so rollouts "
                f"cannot continue ({reasons})"
            )
        self.published = version
        return self.active

    async def unload(self, version: str) -> None:
        """Unload `version` from every active server; a failure only warns."""
        await asyncio.gather(*(self._unload(url, version) for url in self.active))

    async def _load(self, url: str, path: Path, version: str) -> LoadOutcome:
        client = self._clients[url]
        waits = self.retry.waits()
        for attempt in range(self.retry.attempts):
            try:
                await client.load(version, path)
                return LoadOutcome(url)
            except AdapterTransientError as exc:
                if attempt == len(waits):
                    return LoadOutcome(url, self._gave_up(str(exc)))
                await self._sleep(waits[attempt])
            except AdapterError as exc:
                if "already been loaded" not in str(exc):
                    return LoadOutcome(url, one_line(str(exc)))
                if attempt:
                    return LoadOutcome(url)  # an earlier try landed after its reply was lost
                # The server kept this name from before (a resumed run, or another run's
                # version): replace its weights, so the name serves what is at `path`.
                return await self._reload(url, path, version)
        raise AssertionError("unreachable: the last attempt returns")

    async def _reload(self, url: str, path: Path, version: str) -> LoadOutcome:
        try:
            await self._clients[url].load(version, path, inplace=True)
        except AdapterError as exc:
            return LoadOutcome(url, one_line(str(exc)))
        return LoadOutcome(url)

    def _gave_up(self, problem: str) -> str:
        tries = self.retry.attempts
        waited = f" over {self.retry.total_wait_s:g} s" if tries > 1 else ""
        return one_line(f"{problem} (still failing after {tries} attempt(s){waited})")

    def _drop(self, url: str, version: str, problem: str) -> None:
        self.dropped[url] = problem
        left = len(self.active)
        self._report(
            f"policy server {url} taken out of rotation: it cannot load adapter {version!r}: "
            f"{problem} ({left} server(s) left)"
        )

    async def _unload(self, url: str, version: str) -> None:
        try:
            await self._clients[url].unload(version)
        except AdapterError as exc:
            self._report(
                f"previous adapter {version!r} stays loaded on {url}: {one_line(str(exc))}"
            )

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
