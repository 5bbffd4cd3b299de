"""Several replicas of one stateless tool server, balanced by the client.

An environment's `tools_url` may name several URLs (a YAML list, or one comma-separated
string): replicas of the same server. `ReplicaSet` decides which one serves next:

- the replica with the fewest requests in flight (HTTP) or sessions open (MCP) among those not
  cooling down; ties go round-robin, so an idle start spreads evenly;
- a replica that fails (connection error, timeout, 5xx, a broken session) sits out a cooldown
  that doubles with each consecutive failure (`cooldown_s`, up to `MAX_COOLDOWN_S`); a success
  ends it. When every replica is cooling down, the one that recovers first is tried anyway:
  the caller's RetryPolicy, not the cooldown, decides when to give up.

The counts are only useful when every client of the same replicas shares them: the rollout
engine makes hundreds of environments, each with its own client and at most a request or two
in flight. `shared_replicas` keeps one set per list of URLs for the process (plain counters
under a lock, so any event loop or thread may use it). This mirrors the policy client's
balancing in `rollout.openai_policy`, which envs may not import (trainer -> rollout -> envs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from envs.errors import EnvConfigError

COOLDOWN_S = 1.0  # after the first failure; doubled per consecutive failure
MAX_COOLDOWN_S = 30.0


def parse_urls(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The replica URLs in `value`: one URL, a comma-separated string, or a list of them.
    Each must be an http(s) URL with a host; EnvConfigError names the first that is not."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    urls: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise EnvConfigError(f"tools_url: {part!r} is not a URL (expected strings)")
        url = part.strip().rstrip("/")
        if not url:
            continue
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise EnvConfigError(
                f"tools_url: {part.strip()!r} is not an http:// or https:// URL with a host"
            )
        urls.append(url)
    return tuple(dict.fromkeys(urls))  # the same replica twice would only skew the counts


@dataclass
class Replica:
    url: str
    in_flight: int = 0  # requests (HTTP) or open sessions (MCP)
    failures: int = 0  # consecutive
    cooldown_until: float = 0.0  # on the set's clock
    served: int = 0  # answers (HTTP) or sessions opened (MCP) so far, for tests and diagnostics


class ReplicaSet:
    """Which replica serves next, and what each has in flight (see the module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        cooldown_s: float = COOLDOWN_S,
        max_cooldown_s: float = MAX_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise EnvConfigError("tools_url: no replica URL given")
        self._replicas = {url: Replica(url) for url in urls}
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._clock = clock
        self._next = 0  # where the round-robin among ties resumes, an index into the URLs
        self._lock = threading.Lock()

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(self._replicas)

    def __len__(self) -> int:
        return len(self._replicas)

    def snapshot(self) -> dict[str, Replica]:
        """A copy of every replica's state, by URL."""
        with self._lock:
            return {url: Replica(**vars(r)) for url, r in self._replicas.items()}

    def cooling(self) -> list[str]:
        """The replicas sitting out a cooldown now."""
        now = self._clock()
        with self._lock:
            return [r.url for r in self._replicas.values() if r.cooldown_until > now]

    def acquire(self, avoid: Collection[str] = ()) -> str:
        """Pick a replica and count one more in flight there; pair with `release`.

        Candidates are the replicas not in `avoid` (those this request already tried), or all
        of them when none is left. Among candidates not cooling down, the fewest in flight
        wins, ties in turn; when all are cooling down, the one whose cooldown ends first."""
        now = self._clock()
        with self._lock:
            pool = [r for r in self._replicas.values() if r.url not in avoid]
            pool = pool or list(self._replicas.values())
            healthy = [r for r in pool if r.cooldown_until <= now]
            if not healthy:
                healthy = [min(pool, key=lambda r: r.cooldown_until)]
            least = min(r.in_flight for r in healthy)
            tied = {r.url for r in healthy if r.in_flight == least}
            # Round-robin over the whole list: the first tied replica after the last chosen.
            order = list(self._replicas)
            start = self._next % len(order)
            url = next(u for u in order[start:] + order[:start] if u in tied)
            self._next = order.index(url) + 1
            self._replicas[url].in_flight += 1
            return url

    def release(self, url: str) -> None:
        with self._lock:
            self._replicas[url].in_flight -= 1

    @contextmanager
    def lease(self, avoid: Collection[str] = ()) -> Iterator[str]:
        """`acquire` for the duration of a `with` block."""
        url = self.acquire(avoid)
        try:
            yield url
        finally:
            self.release(url)

    def ok(self, url: str) -> None:
        """`url` answered: its cooldown, if any, is over."""
        with self._lock:
            replica = self._replicas[url]
            replica.failures, replica.cooldown_until = 0, 0.0
            replica.served += 1

    def failed(self, url: str) -> None:
        """`url` failed: it sits out `cooldown_s`, doubled per consecutive failure."""
        with self._lock:
            replica = self._replicas[url]
            replica.failures += 1
            pause = self.cooldown_s * 2 ** (replica.failures - 1)
            replica.cooldown_until = self._clock() + min(self.max_cooldown_s, pause)


_SHARED: dict[tuple[str, tuple[str, ...]], ReplicaSet] = {}
_SHARED_LOCK = threading.Lock()


def shared_replicas(kind: str, urls: Sequence[str]) -> ReplicaSet:
    """The process's one ReplicaSet for `urls` used as `kind` ("http" counts requests, "mcp"
    counts sessions, so the two never share counts)."""
    key = (kind, tuple(urls))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = ReplicaSet(key[1])
        return _SHARED[key]
