"""`OpenAIPolicy`: the Policy protocol over HTTP, for vLLM 0.33 or any OpenAI-compatible server.

It asks for the exact tokens (`"return_token_ids": true`, `"logprobs": true`) and records them
as served: nothing is re-tokenized. Transient trouble (connection errors, timeouts, 429, 5xx)
is retried with exponential backoff, preferably on another server; a refusal (other 4xx, such
as an unknown model or adapter name) is raised at once, since repeating it cannot help.
Several servers share the load by least outstanding requests: each request goes to the server
with the fewest in flight (ties round-robin), and a server that just failed sits out a short,
growing cool-down, so a dead replica is soon avoided instead of costing every request a retry.
A new adapter version is loaded on every server at once before any request names it; a server
that cannot load it leaves the rotation (rollout.adapter_fleet). Requests go through
`rollout.http1` (httpx cost most of the engine's CPU per model call), or through httpx when a
proxy applies to a server's URL or a transport is injected.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx

from envs.client import shared_ssl_context
from rollout.errors import (
    PolicyError,
    PolicyRequestError,
    PolicyTimeoutError,
    PolicyUnavailableError,
    RolloutConfigError,
    TokenIdsMissingError,
)
from rollout.http1 import Http1Client, HttpError, JsonResponse
from rollout.policy import DEFAULT_REQUEST_TIMEOUT_S, Turn, TurnRequest

if TYPE_CHECKING:
    from rollout.adapter_fleet import AdapterFleet, PublishRetry

API_KEY_ENV = "VLLM_API_KEY"
_MAX_COOLDOWN_S = 60.0
_CONNECTIONS_PER_POOL = 8
_JSON = {"Content-Type": "application/json"}
_NUMBER = (int, float)  # a tuple: `int | float` would build a new union for every token


def normalise_base_url(url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all mean one server."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise RolloutConfigError(f"policy URL {url!r} must start with http:// or https://")
    return url


def encode_json(payload: dict[str, Any]) -> bytes:
    """The request body, byte for byte what httpx's `json=` sends."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def _proxied(url: str) -> bool:
    """Whether httpx would send requests for `url` through a proxy from the environment
    (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, minus NO_PROXY): Http1Client does not do proxies."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


@dataclass
class _Pool:
    http: httpx.AsyncClient
    in_flight: int = 0


class _HttpxPools:
    """httpx, where Http1Client does not fit. Its pool scans all its connections for every
    request (quadratic under load), so many small pools, each request on the least busy."""

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
    in_flight: int = 0
    failures: int = 0  # consecutive
    cooldown_until: float = 0.0  # monotonic time


@dataclass(frozen=True)
class _Problem:
    """Why one attempt failed; `timeout` decides which error the exhausted budget raises."""

    url: str
    text: str
    timeout: bool = False


def server_message(response: JsonResponse) -> str:
    """The server's own error text: vLLM's {"error": {"message"}}, FastAPI's detail, or text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "message", "detail"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]


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
        http_client: Literal["auto", "httpx"] = "auto",
    ) -> None:
        """`http_client="httpx"` keeps httpx even where rollout.http1 would do (a comparison:
        benchmarks/bench_rollout.py --client httpx)."""
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise RolloutConfigError("OpenAIPolicy needs at least one base URL")
        if attempts < 1 or timeout_s <= 0:
            raise RolloutConfigError("attempts must be >= 1 and timeout_s > 0")
        self._backends = [_Backend(normalise_base_url(url)) for url in urls]
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
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http: Http1Client | _HttpxPools
        proxied = any(_proxied(backend.url) for backend in self._backends)
        if http_client == "auto" and transport is None and not proxied:
            self._http = Http1Client(
                headers, max_connections=max_connections, ssl_context=shared_ssl_context()
            )
        else:  # an injected transport (tests), or a proxy httpx would honour and Http1Client not
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

    async def _attempt(self, backend: _Backend, body: bytes) -> JsonResponse | _Problem:
        """One try: the response (2xx or a refusal), or the transient problem."""
        url = backend.url
        backend.in_flight += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._http.post_json(f"{url}/v1/chat/completions", body)
        except (TimeoutError, httpx.TimeoutException):
            return _Problem(url, f"no reply within {self.timeout_s:g} s", timeout=True)
        except (httpx.TransportError, HttpError) as exc:
            return _Problem(url, f"{type(exc).__name__}: {exc}".rstrip(": "))
        finally:
            backend.in_flight -= 1
        if response.status_code == 429 or response.status_code >= 500:
            return _Problem(url, f"HTTP {response.status_code}: {server_message(response)}")
        return response

    async def complete(self, request: TurnRequest) -> Turn:
        payload = self._payload(request)
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
        rotation (rollout.adapter_fleet); AdapterError when none is left."""
        server_path = self.adapter_dir_on_server / path.name if self.adapter_dir_on_server else path
        serving = set(await self._adapter_fleet().publish(server_path, version))
        self._backends = [backend for backend in self._backends if backend.url in serving]
        self._model = version

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


def _tool_call(raw: Any) -> dict[str, Any]:
    """One tool call in OpenAI shape, arguments as a JSON string."""
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict):
        raise ValueError(f"malformed tool call {raw!r}")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {
        "id": str(raw.get("id") or ""),
        "type": "function",
        "function": {"name": str(function.get("name") or ""), "arguments": arguments},
    }


def parse_turn(response: JsonResponse, url: str, latency_s: float) -> Turn:
    """The Turn from a chat.completion body; token ids and logprobs exactly as served."""
    try:
        body = response.json()
        choice = body["choices"][0]
        message = choice["message"]
        tool_calls = [_tool_call(raw) for raw in message.get("tool_calls") or []]
        served_model = str(body.get("model") or "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise PolicyError(f"policy server {url} sent an unreadable completion: {exc!r}") from None
    prompt_ids, completion_ids = body.get("prompt_token_ids"), choice.get("token_ids")
    if not isinstance(prompt_ids, list) or not isinstance(completion_ids, list):
        raise TokenIdsMissingError(
            f"policy server {url} returned no token ids (prompt_token_ids / choices[0].token_ids)"
            ": it must honour the request field `return_token_ids` (vLLM 0.10.2 or newer; this "
            "project targets vLLM 0.33, started by `toolgym vllm serve`)"
        )
    entries = (choice.get("logprobs") or {}).get("content") or []
    logprobs = [
        float(entry["logprob"])
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("logprob"), _NUMBER)
    ]
    if len(logprobs) != len(completion_ids) or len(entries) != len(completion_ids):
        raise TokenIdsMissingError(
            f"policy server {url} returned {len(logprobs)} logprobs for {len(completion_ids)} "
            "completion token ids: it must honour `logprobs: true` with one entry per token "
            "(vLLM 0.33 started with --max-logprobs >= 0, as `toolgym vllm serve` does)"
        )
    content = message.get("content")
    turn_message: dict[str, Any] = {"role": "assistant", "content": content or ""}
    if tool_calls:
        turn_message["tool_calls"] = tool_calls
    return Turn(
        message=turn_message,
        prompt_ids=prompt_ids,  # JSON integers as served; TurnTokens validates them
        completion_ids=completion_ids,
        logprobs=logprobs,
        finish_reason=str(choice.get("finish_reason") or "stop"),
        model=served_model,
        latency_s=latency_s,
    )
