"""A faithful fake of a vLLM 0.33 OpenAI-compatible server, for tests and CPU-only benchmarks.

vLLM cannot run on these machines, yet the rollout code must be tested against its exact wire
format: `return_token_ids`, per-token logprobs, hermes-parsed tool calls, runtime LoRA routes,
error bodies. This fake speaks that format (bodies and errors: rollout.fake_vllm_wire) with a
toy tokenizer and a Qwen-like chat template (rollout.fake_chat), so the property the trainer
relies on holds for real: a conversation re-rendered with the assistant's generated text
extends the previous prompt + completion ids exactly. What the "model" says comes from a
pluggable script (rollout.fake_scripts); faults (delay, failures, hangs, a dead engine) are
injected through a typed controller that tests reach as `app.state.fake.faults`. Adapter loads
behave as vLLM 0.33's do, down to the 404 for a directory the server cannot see (yet), so a
lagging shared filesystem is simply a directory created late.

    python -m rollout.fake_vllm --host 127.0.0.1 --port 8000 [--delay S] [--script agent|echo]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic_core
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from rollout.fake_chat import (
    IM_END,
    SPECIAL_IDS,
    decode,
    encode,
    encode_prompt,
    message_text,
    render_prompt,
    token_bytes,
    token_text,
    toy_logprob,
)
from rollout.fake_scripts import SCRIPTS, Script, agent_script, echo_script
from rollout.fake_vllm_wire import (
    ChatRequest,
    LoadLoraRequest,
    UnloadLoraRequest,
    error_response,
    parse_hermes,
    read_body,
)

__all__ = [
    "DEFAULT_MODEL",
    "IM_END",
    "SCRIPTS",
    "SPECIAL_IDS",
    "ChatRequest",
    "agent_script",
    "decode",
    "echo_script",
    "encode",
    "message_text",
    "parse_hermes",
    "render_prompt",
]

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
_SPECIAL_ID_SET = frozenset(SPECIAL_IDS.values())


# ---- state, faults ----


@dataclass
class FaultController:
    """Faults for the next completions; settable from the test thread while the server runs."""

    delay_s: float = 0.0  # added to every completion (an asyncio sleep: requests overlap)
    dead: bool = False  # /health and completions answer 503
    hang_s: float = 3600.0  # how long a hung request sleeps (it ends if the client leaves)
    received: int = 0  # completion requests that arrived
    served: int = 0  # completions answered 200
    _fail: deque[int] = field(default_factory=deque)
    _hang: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._fail.extend([status] * count)

    def hang_next(self, count: int) -> None:
        with self._lock:
            self._hang += count

    def take(self) -> int | Literal["hang"] | None:
        """The fault for the arriving request: a status to fail with, "hang", or None."""
        with self._lock:
            self.received += 1
            if self.dead:
                return 503
            if self._hang:
                self._hang -= 1
                return "hang"
            return self._fail.popleft() if self._fail else None


@dataclass
class FakeSettings:
    model: str = DEFAULT_MODEL
    script: Script = agent_script
    lora_modules: dict[str, str] = field(default_factory=dict)
    allow_runtime_lora: bool = False  # vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=1
    tool_parser: bool = True  # --enable-auto-tool-choice --tool-call-parser hermes
    api_key: str | None = None  # guards /v1 like `--api-key`
    max_model_len: int = 32768
    # One id per UTF-8 byte (special tokens stay single ids, every id < 256 + specials): ids a
    # tiny local model's vocabulary covers, for tests that train on what the fake served.
    byte_tokens: bool = False


def byte_ids(ids: list[int]) -> list[int]:
    """The toy ids split into single-byte ids; decode() reads both alike."""
    out: list[int] = []
    for token_id in ids:
        out.extend((token_id,) if token_id in _SPECIAL_ID_SET else token_bytes(token_id))
    return out


@dataclass
class FakeVllm:
    settings: FakeSettings
    faults: FaultController = field(default_factory=FaultController)
    adapters: dict[str, str] = field(default_factory=dict)
    load_attempts: dict[str, int] = field(default_factory=dict)  # by lora_name, failed included
    history: deque[ChatRequest] = field(default_factory=lambda: deque(maxlen=1000))

    def complete(self, request: ChatRequest, model: str) -> dict[str, Any]:
        """The chat.completion body, shaped exactly like vLLM's."""
        prompt_ids = encode_prompt(request.messages, request.tools)
        if self.settings.byte_tokens:
            prompt_ids = byte_ids(prompt_ids)
        wanted, most = len(prompt_ids) + (request.max_tokens or 1), self.settings.max_model_len
        if wanted > most:
            raise ValueError(
                f"This model's maximum context length is {most} tokens. However, you requested "
                f"{wanted} tokens ({len(prompt_ids)} in the messages, {wanted - len(prompt_ids)} "
                "in the completion). Please reduce the length of the messages or completion."
            )
        generated = [*encode(self.settings.script(request)), IM_END]
        if self.settings.byte_tokens:
            generated = byte_ids(generated)
        limit = request.max_tokens or self.settings.max_model_len - len(prompt_ids)
        finish = "stop"
        if len(generated) > limit:
            generated, finish = generated[:limit], "length"
        text = decode(generated[:-1] if generated[-1:] == [IM_END] else generated)
        content: str | None = text
        calls: list[dict[str, Any]] = []
        if self.settings.tool_parser and request.tools and request.tool_choice != "none":
            content, calls = parse_hermes(text)
            finish = "tool_calls" if calls else finish
        seed = request.seed or 0
        entries = [
            {
                "token": token_text(tid),
                "logprob": toy_logprob(seed, position),
                "bytes": list(token_bytes(tid)),
                "top_logprobs": [],
            }
            for position, tid in enumerate(generated)
        ]
        message = {"role": "assistant", "content": content, "tool_calls": calls}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": {"content": entries} if request.logprobs else None,
            "finish_reason": finish,
        }
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(generated),
                "total_tokens": len(prompt_ids) + len(generated),
            },
        }
        if request.return_token_ids:
            choice["token_ids"] = generated
            body["prompt_token_ids"] = prompt_ids
        return body


async def _pause(request: Request, seconds: float) -> None:
    """Sleep, but stop early when the client has gone (so servers shut down promptly).

    Checks once a second: hundreds of requests in flight each polling every few milliseconds
    would make the fake itself the bottleneck of a throughput benchmark."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
        if deadline - time.monotonic() <= 0:
            return  # done: no need to ask (the question costs ~10% of the fake's CPU)
        if await request.is_disconnected():
            return


class ApiKeyMiddleware:
    """`--api-key`: /v1 answers 401 without `Authorization: Bearer KEY`. Plain ASGI: Starlette's
    `@app.middleware("http")` wraps every request in a task group and a body stream, which
    took a fifth of the fake's CPU in the rollout benchmark."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            sent = dict(scope["headers"]).get(b"authorization")
            if sent != self.expected:
                await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: FakeSettings | None = None) -> FastAPI:
    fake = FakeVllm(settings or FakeSettings())
    fake.adapters.update(fake.settings.lora_modules)
    app = FastAPI(title="fake vLLM 0.33")
    app.state.fake = fake

    if fake.settings.api_key:
        app.add_middleware(ApiKeyMiddleware, key=fake.settings.api_key)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=503 if fake.faults.dead else 200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        base = fake.settings.model
        cards = [{"id": base, "object": "model", "owned_by": "vllm", "root": base, "parent": None}]
        for name, path in fake.adapters.items():
            cards.append(
                {"id": name, "object": "model", "owned_by": "vllm", "root": path, "parent": base}
            )
        return {"object": "list", "data": cards}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        fault = fake.faults.take()
        if fault == "hang":
            await _pause(request, fake.faults.hang_s)
            return error_response(503, "hung request released")
        if fault is not None:
            return error_response(fault, f"injected failure (HTTP {fault})")
        body = await read_body(request, ChatRequest)
        if isinstance(body, Response):
            return body
        if body.stream:
            return error_response(400, "stream=true is not supported by the fake vLLM server")
        model = body.model or fake.settings.model
        if model != fake.settings.model and model not in fake.adapters:
            return error_response(404, f"The model `{model}` does not exist.")
        if fake.faults.delay_s > 0:
            await _pause(request, fake.faults.delay_s)
        fake.history.append(body)
        try:
            completion = fake.complete(body, model)
        except ValueError as exc:
            return error_response(400, str(exc))
        fake.faults.served += 1
        # pydantic-core's encoder: the fake shares the benchmark's cores with the engine it
        # measures, so its CPU per reply is kept small (json.dumps took ~5x as long)
        return Response(pydantic_core.to_json(completion), media_type="application/json")

    if fake.settings.allow_runtime_lora:
        _add_lora_routes(app, fake)
    return app


def _add_lora_routes(app: FastAPI, fake: FakeVllm) -> None:
    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request) -> Response:
        body = await read_body(request, LoadLoraRequest)
        if isinstance(body, Response):
            return body
        name, path = body.lora_name, Path(body.lora_path)
        if name == fake.settings.model:
            return error_response(400, f"The lora name '{name}' is the base model's name.")
        if name in fake.adapters and not body.load_inplace:
            return error_response(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
            )
        fake.load_attempts[name] = fake.load_attempts.get(name, 0) + 1
        if not path.exists() or (path.is_dir() and not (path / "adapter_config.json").exists()):
            # vLLM 0.33 maps the worker's FileNotFoundError to 404 NotFoundError.
            message = f"Loading lora {name} failed: No adapter found for {body.lora_path}"
            return error_response(404, message)
        fake.adapters[name] = str(path)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request) -> Response:
        body = await read_body(request, UnloadLoraRequest)
        if isinstance(body, Response):
            return body
        if fake.adapters.pop(body.lora_name, None) is None:
            return error_response(404, f"The lora adapter '{body.lora_name}' cannot be found.")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


def main(argv: list[str] | None = None) -> None:
    """Run as a process; also accepts `serve MODEL` and vLLM's flags so that a `--vllm-bin`
    wrapper can stand in for `vllm` (flags it does not model are ignored)."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m rollout.fake_vllm")
    parser.add_argument("positional", nargs="*", help="`serve MODEL`, as vllm takes it")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per completion")
    parser.add_argument("--script", choices=sorted(SCRIPTS), default="agent")
    parser.add_argument("--model", default=None)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--allow-runtime-lora", action="store_true")
    parser.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH")
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY") or None)
    parser.add_argument("--no-tool-parser", action="store_true")
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--byte-tokens", action="store_true", help="one id per UTF-8 byte")
    args, _ignored = parser.parse_known_args(argv)
    served = (
        args.positional[1]
        if args.positional[:1] == ["serve"] and len(args.positional) > 1
        else None
    )
    runtime_env = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in {"1", "true"}
    settings = FakeSettings(
        model=args.served_model_name or args.model or served or DEFAULT_MODEL,
        script=SCRIPTS[args.script],
        lora_modules=dict(item.split("=", 1) for item in args.lora_modules if "=" in item),
        allow_runtime_lora=args.allow_runtime_lora or runtime_env,
        tool_parser=not args.no_tool_parser,
        api_key=args.api_key,
        max_model_len=args.max_model_len,
        byte_tokens=args.byte_tokens,
    )
    app = create_app(settings)
    app.state.fake.faults.delay_s = args.delay
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2
    )


if __name__ == "__main__":
    main()
