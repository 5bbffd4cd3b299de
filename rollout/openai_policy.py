"""`OpenAIPolicy`: the Policy protocol over HTTP, for vLLM 0.33 or any OpenAI-compatible server.

It asks for the exact tokens (`"return_token_ids": true`, `"logprobs": true`) and records them
as served: nothing is re-tokenized. Transient trouble (connection errors, timeouts, 429, 5xx)
is retried with exponential backoff, preferably on another server; a refusal (other 4xx, such
as an unknown model or adapter name) is raised at once, since repeating it cannot help.
Several servers share the load by least outstanding requests: each request goes to the server
with the fewest in flight (ties round-robin), and a server that just failed sits out a short,
growing cool-down, so a dead replica is soon avoided instead of costing every request a retry.
A new adapter version is loaded on every server at once before any request names it; a server
that cannot load it leaves the rotation (rollout.adapter_fleet); the version before it is
unloaded only once no request naming it is still in flight. Requests go through aiohttp
(`envs.aiohttp_client`: httpx cost most of the engine's CPU per model call), or through httpx
when a transport is injected.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

from envs.aiohttp_client import (
    LoopSession,
    ProxyNotSupportedError,
    TransportError,
    encode_json,
    env_proxy,
    shared_ssl_context,
)
from rollout.chat_completion import JsonResponse, parse_turn, server_message
from rollout.errors import (
    PolicyRequestError,
    PolicyTimeoutError,
    PolicyUnavailableError,
    RolloutConfigError,
)
from rollout.policy import DEFAULT_REQUEST_TIMEOUT_S, Turn, TurnRequest

if TYPE_CHECKING:
    from rollout.adapter_fleet import AdapterFleet, PublishRetry

API_KEY_ENV = "VLLM_API_KEY"
_MAX_COOLDOWN_S = 60.0
# Below vLLM's 5 s (uvicorn's default, VLLM_HTTP_TIMEOUT_KEEP_ALIVE): the client lets go of an
# idle connection before the server closes it, so no request goes out on a closing one.
POLICY_KEEPALIVE_S = 4.0
_CONNECTIONS_PER_POOL = 8
_JSON = {"Content-Type": "application/json"}


def normalise_base_url(url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all mean one server."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise RolloutConfigError(f"policy URL {url!r} must start with http:// or https://")
    return url


@dataclass
class _Pool:
    http: httpx.AsyncClient
    in_flight: int = 0


class _HttpxPools:
    """httpx, for an injected transport (or a comparison). Its pool scans all its connections
    for every request (quadratic under load), so many small pools, each on the least busy."""

    def __init__(
        self,
        headers: dict[str, str],
        timeout_s: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        shards = max(1, math.ceil(max_connections / _CONNECTIONS_PER_POOL))
        per_pool = math.ceil(max_connections / shards)
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        self._pools = [
            _Pool(
                httpx.AsyncClient(
                    headers=headers,
                    timeout=timeout_s,
                    limits=limits,
                    transport=transport,
                    verify=shared_ssl_context(),
                )
            )
            for _ in range(shards)
        ]

    async def post_json(self, url: str, body: bytes) -> httpx.Response:
        pool = min(self._pools, key=lambda p: p.in_flight)
        pool.in_flight += 1
        try:
            return await pool.http.post(url, content=body, headers=_JSON)
        finally:
            pool.in_flight -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.http.aclose()


@dataclass
class _Backend:
    url: str
    proxy: str | None = None  # from the environment, as httpx would pick it
    in_flight: int = 0
    failures: int = 0  # consecutive
    cooldown_until: float = 0.0  # monotonic time


@dataclass(frozen=True)
class _Problem:
    """Why one attempt failed; `timeout` decides which error the exhausted budget raises."""

    url: str
    text: str
    timeout: bool = False


class OpenAIPolicy:
    """Plays assistant turns through `POST /v1/chat/completions` on one or several servers."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        attempts: int = 3,
        backoff_s: float = 0.5,
        max_connections: int = 256,
        cooldown_s: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
        adapter_dir_on_server: Path | None = None,
        publish_retry: PublishRetry | None = None,
        http_client: Literal["aiohttp", "httpx"] = "aiohttp",
    ) -> None:
        """`http_client="httpx"` keeps httpx even without an injected transport (a comparison:
        benchmarks/bench_rollout.py --client httpx)."""
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise RolloutConfigError("OpenAIPolicy needs at least one base URL")
        if attempts < 1 or timeout_s <= 0:
            raise RolloutConfigError("attempts must be >= 1 and timeout_s > 0")
        self._backends = [_backend(url) for url in urls]
        self._model = model
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.cooldown_s = cooldown_s
        self._next = 0  # round-robin cursor for ties
        self._api_key = api_key
        self.adapter_dir_on_server = adapter_dir_on_server  # where servers read published adapters
        self.publish_retry = publish_retry  # None: rollout.adapter_fleet's defaults
        self._fleet: AdapterFleet | None = None  # made by the first publish_adapter
        self._by_model: dict[str, int] = {}  # requests in flight per model name
        self._drained: dict[str, asyncio.Event] = {}  # set when a name has none in flight
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http: LoopSession | _HttpxPools
        if http_client == "aiohttp" and transport is None:
            # No timer of aiohttp's own: `_attempt` bounds each try with asyncio.timeout.
            self._http = LoopSession(headers, limit=max_connections, keepalive_s=POLICY_KEEPALIVE_S)
        else:  # an injected transport (tests), or the comparison
            self._http = _HttpxPools(headers, timeout_s, max_connections, transport)

    @property
    def model(self) -> str:
        return self._model

    def set_model(self, name: str) -> None:
        """Route later requests to `name` (a newly published LoRA adapter, or the base)."""
        self._model = name

    @property
    def base_urls(self) -> list[str]:
        return [backend.url for backend in self._backends]

    def in_flight(self) -> dict[str, int]:
        return {backend.url: backend.in_flight for backend in self._backends}

    def _pick(self, avoid: set[str]) -> _Backend:
        """Fewest in flight among servers not cooling down (and not yet tried by this request
        when another is available); ties go round-robin."""
        now = time.monotonic()
        pool = [b for b in self._backends if b.url not in avoid] or self._backends
        healthy = [b for b in pool if b.cooldown_until <= now]
        if not healthy:  # every candidate failed recently: take the one that recovers first
            healthy = [min(pool, key=lambda b: b.cooldown_until)]
        least = min(b.in_flight for b in healthy)
        tied = [b for b in healthy if b.in_flight == least]
        chosen = tied[self._next % len(tied)]
        self._next += 1
        return chosen

    def _failed(self, backend: _Backend) -> None:
        backend.failures += 1
        cooldown = min(_MAX_COOLDOWN_S, self.cooldown_s * 2 ** (backend.failures - 1))
        backend.cooldown_until = time.monotonic() + cooldown

    def _payload(self, request: TurnRequest) -> dict[str, Any]:
        sampling = request.sampling
        payload: dict[str, Any] = {
            "model": request.model or self._model,
            "messages": request.messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "logprobs": True,
            "return_token_ids": True,
            "stream": False,
        }
        if request.tools:
            payload["tools"] = request.tools
            payload["tool_choice"] = "auto"
        if request.seed is not None:
            payload["seed"] = request.seed
        return payload

    async def _post(self, backend: _Backend, body: bytes) -> JsonResponse:
        url = f"{backend.url}/v1/chat/completions"
        if isinstance(self._http, LoopSession):
            return await self._http.request("POST", url, body, backend.proxy)
        return await self._http.post_json(url, body)

    async def _attempt(self, backend: _Backend, body: bytes) -> JsonResponse | _Problem:
        """One try: the response (2xx or a refusal), or the transient problem."""
        url = backend.url
        backend.in_flight += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._post(backend, body)
        except (TimeoutError, httpx.TimeoutException):
            return _Problem(url, f"no reply within {self.timeout_s:g} s", timeout=True)
        except httpx.TransportError as exc:
            return _Problem(url, f"{type(exc).__name__}: {exc}".rstrip(": "))
        except TransportError as exc:
            return _Problem(url, str(exc))
        finally:
            backend.in_flight -= 1
        if response.status_code == 429 or response.status_code >= 500:
            return _Problem(url, f"HTTP {response.status_code}: {server_message(response)}")
        return response

    async def complete(self, request: TurnRequest) -> Turn:
        payload = self._payload(request)
        model = payload["model"]
        self._by_model[model] = self._by_model.get(model, 0) + 1
        try:
            return await self._complete(payload)
        finally:
            self._done_with(model)

    def _done_with(self, model: str) -> None:
        left = self._by_model[model] - 1
        if left:
            self._by_model[model] = left
            return
        del self._by_model[model]
        drained = self._drained.pop(model, None)
        if drained is not None:
            drained.set()

    def requests_naming(self, model: str) -> int:
        """How many requests naming `model` are in flight (retries and back-off included)."""
        return self._by_model.get(model, 0)

    def _longest_request_s(self) -> float:
        """The most one `complete` can take: every attempt timing out, with its back-offs."""
        backoffs = self.backoff_s * (2 ** (self.attempts - 1) - 1)
        return self.attempts * self.timeout_s + backoffs

    async def _drain(self, model: str) -> None:
        """Wait until no request naming `model` is in flight, at most as long as one request
        may take (after that, whatever still names it has failed or is about to)."""
        if not self.requests_naming(model):
            return
        drained = self._drained.setdefault(model, asyncio.Event())
        try:
            async with asyncio.timeout(self._longest_request_s()):
                await drained.wait()
        except TimeoutError:
            pass  # the caller unloads anyway: a stale adapter must not pin the server forever

    async def _complete(self, payload: dict[str, Any]) -> Turn:
        body = encode_json(payload)  # once, however many attempts
        started = time.perf_counter()
        tried: set[str] = set()
        problem: _Problem | None = None
        delay = self.backoff_s
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            backend = self._pick(tried)
            tried.add(backend.url)
            outcome = await self._attempt(backend, body)
            if isinstance(outcome, _Problem):
                problem = outcome
                self._failed(backend)
                continue
            backend.failures, backend.cooldown_until = 0, 0.0
            if outcome.status_code >= 400:
                raise PolicyRequestError(
                    f"policy server {backend.url} refused the request for model "
                    f"{payload['model']!r} (HTTP {outcome.status_code}): {server_message(outcome)}"
                )
            return parse_turn(outcome, backend.url, time.perf_counter() - started)
        assert problem is not None
        error = PolicyTimeoutError if problem.timeout else PolicyUnavailableError
        raise error(
            f"policy server {problem.url} failed after {self.attempts} attempt(s) "
            f"(servers tried: {', '.join(sorted(tried))}); last problem: {problem.text}"
        )

    async def publish_adapter(self, path: Path, version: str) -> None:
        """Load the adapter as `version` on every server this policy plays on, all at once
        (requests are balanced across them, so each must serve it before any asks for it);
        only then route later requests to `version`. A server that cannot load it leaves the
        rotation (rollout.adapter_fleet); AdapterError when none is left. The version before
        is unloaded last, once the requests still naming it are done: unloading it under them
        would answer them 404."""
        server_path = self.adapter_dir_on_server / path.name if self.adapter_dir_on_server else path
        fleet = self._adapter_fleet()
        previous = fleet.published
        serving = set(await fleet.load(server_path, version))
        self._backends = [backend for backend in self._backends if backend.url in serving]
        self._model = version
        if previous and previous != version:
            await self._drain(previous)
            await fleet.unload(previous)

    def _adapter_fleet(self) -> AdapterFleet:
        if self._fleet is None:
            # Imported here: adapter_fleet needs rollout.vllm, which imports this module.
            from rollout.adapter_fleet import AdapterFleet

            self._fleet = AdapterFleet(
                self.base_urls, api_key=self._api_key, retry=self.publish_retry
            )
        return self._fleet

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._fleet is not None:
            await self._fleet.aclose()


def _backend(url: str) -> _Backend:
    base = normalise_base_url(url)
    try:
        return _Backend(base, env_proxy(base))
    except ProxyNotSupportedError as exc:
        raise RolloutConfigError(str(exc)) from None
