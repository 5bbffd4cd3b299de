"""Start `vllm serve` for rollouts, and publish LoRA adapters to it while it runs.

vLLM 0.33 pins its own torch and cannot share the project venv, so it always runs as a separate
process (its own venv via `vllm_bin`, or the official container via `docker_image`) and is
reached over HTTP. The command line carries what rollouts rely on: tool calling with the
model's parser, processed logprobs, LoRA with a rank vLLM accepts, and runtime adapter routes
(env VLLM_ALLOW_RUNTIME_LORA_UPDATING=1) so each new policy version can be published without a
restart. The API key is read from an environment variable and never written to a log.
Several servers on one machine (one per GPU or per tensor-parallel group): rollout.vllm_group.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

from rollout.chat_completion import server_message
from rollout.errors import AdapterError, AdapterTransientError, LaunchError
from rollout.openai_policy import API_KEY_ENV, normalise_base_url

# vLLM 0.33 answers a load whose directory it cannot read with 404 NotFoundError "Loading lora
# NAME failed: No adapter found for PATH" (a shared filesystem that has not caught up yet).
_NOT_VISIBLE = "No adapter found"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
GPUS_ENV = "CUDA_VISIBLE_DEVICES"
_PARSERS = (  # first match wins: (pattern on the lower-cased model name, vLLM tool parser)
    (r"qwen3-?coder", "qwen3_coder"),
    (r"qwen2|qwen3|qwq|hermes", "hermes"),
    (r"llama-?3", "llama3_json"),
    (r"mistral|mixtral|ministral", "mistral"),
)


class VllmServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str  # HF id or local path
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    served_model_name: str | None = None
    tool_call_parser: str | None = None  # None: chosen from the model name
    enable_lora: bool = False  # LoRA on even with no adapter at start (runtime publishing)
    lora_modules: dict[str, str] = Field(default_factory=dict)  # name -> adapter path
    lora_rank: int | None = None  # PEFT rank; rounded up to one vLLM accepts (default 64)
    max_loras: int = Field(default=2, ge=1)  # adapters per batch: current + previous version
    max_cpu_loras: int | None = None
    max_logprobs: int = Field(default=20, ge=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(default=1, ge=1)  # GPUs one server spans
    gpus: list[str] | None = None  # CUDA_VISIBLE_DEVICES for this server; None: inherited
    max_model_len: int | None = None
    api_key_env: str = API_KEY_ENV
    extra_args: list[str] = Field(default_factory=list)
    vllm_bin: str = "vllm"
    docker_image: str | None = None  # the official image's entrypoint is `vllm serve`
    volumes: list[str] = Field(default_factory=list)  # host dirs mounted as-is in docker

    @property
    def uses_lora(self) -> bool:
        return self.enable_lora or bool(self.lora_modules) or self.lora_rank is not None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


def tool_parser_for(model_name: str) -> str:
    """vLLM's `--tool-call-parser` for a model family."""
    name = model_name.lower()
    for pattern, parser in _PARSERS:
        if re.search(pattern, name):
            return parser
    raise LaunchError(
        f"no known tool-call parser for model {model_name!r}: pass --tool-call-parser "
        "(see `vllm serve --help`; e.g. hermes for Qwen, llama3_json for Llama 3.x)"
    )


def round_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds a PEFT adapter of `rank`."""
    if rank < 1:
        raise LaunchError(f"LoRA rank must be >= 1, not {rank}")
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise LaunchError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank (512)")


def vllm_arguments(config: VllmServeConfig) -> list[str]:
    """Everything after `vllm serve`."""
    parser = config.tool_call_parser or tool_parser_for(config.model)
    args = [config.model, "--host", config.host, "--port", str(config.port)]
    if config.served_model_name:
        args += ["--served-model-name", config.served_model_name]
    args += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    args += ["--max-logprobs", str(config.max_logprobs), "--logprobs-mode", "processed_logprobs"]
    args += ["--gpu-memory-utilization", f"{config.gpu_memory_utilization:g}"]
    if config.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
    if config.max_model_len:
        args += ["--max-model-len", str(config.max_model_len)]
    if config.uses_lora:
        rank = round_lora_rank(config.lora_rank or 64)
        args += [
            "--enable-lora",
            "--max-lora-rank",
            str(rank),
            "--max-loras",
            str(config.max_loras),
        ]
        if config.max_cpu_loras:
            args += ["--max-cpu-loras", str(config.max_cpu_loras)]
        if config.lora_modules:
            args += ["--lora-modules", *(f"{n}={p}" for n, p in config.lora_modules.items())]
    if key := os.environ.get(config.api_key_env):
        args += ["--api-key", key]
    return args + list(config.extra_args)


def vllm_command(config: VllmServeConfig) -> list[str]:
    """The argv that starts the server: the local `vllm` binary, or the official container."""
    if not config.docker_image:
        return [config.vllm_bin, "serve", *vllm_arguments(config)]
    mounts = [str(Path.home() / ".cache" / "huggingface") + ":/root/.cache/huggingface"]
    local = [config.model, *config.lora_modules.values(), *config.volumes]
    mounts += [f"{Path(p).resolve()}:{Path(p).resolve()}" for p in local if Path(p).exists()]
    docker = ["docker", "run", "--rm", "--gpus", "all", "--network", "host", "--ipc", "host"]
    docker += ["-e", f"{RUNTIME_LORA_ENV}=1", "-e", "HF_TOKEN"]  # HF_TOKEN: value from our env
    if config.gpus is not None:  # all GPUs go in; the variable (from vllm_environment) picks
        docker += ["-e", GPUS_ENV]
    for mount in mounts:
        docker += ["-v", mount]
    return [*docker, config.docker_image, *vllm_arguments(config)]


def redacted(command: list[str]) -> list[str]:
    """The command as it may be printed: the value after --api-key hidden."""
    return [
        "***" if index and command[index - 1] == "--api-key" else part
        for index, part in enumerate(command)
    ]


def vllm_environment(
    base: dict[str, str] | None = None, gpus: list[str] | None = None
) -> dict[str, str]:
    """The server's environment: ours plus the switch that enables runtime adapter routes,
    and the GPUs it may use when it is one of several."""
    env = dict(os.environ if base is None else base)
    env[RUNTIME_LORA_ENV] = "1"
    if gpus is not None:
        env[GPUS_ENV] = ",".join(gpus)
    return env


def environment_changes(config: VllmServeConfig) -> dict[str, str]:
    """What the server's environment adds to ours, as a dry run prints it."""
    changes = {RUNTIME_LORA_ENV: "1"}
    if config.gpus is not None:
        changes[GPUS_ENV] = ",".join(config.gpus)
    return changes


@dataclass
class VllmProcess:
    """A running server, started in its own process group so stop() ends all its children."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    command: list[str]  # redacted

    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, number: int) -> None:
        """Signal the whole process group (vLLM's engine runs in child processes)."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):  # it exited just now
                os.killpg(self.process.pid, number)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM the group, SIGKILL after `timeout_s`; returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
        return self.process.wait()

    def __enter__(self) -> VllmProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def launch(
    config: VllmServeConfig, log_path: Path, health_timeout_s: float = 900.0, poll_s: float = 0.5
) -> VllmProcess:
    """Start the server and return once GET /health answers 200; LaunchError (with the log's
    last lines) as soon as the process exits, or when the timeout passes."""
    if port_taken(config.host, config.port):
        raise LaunchError(f"port {config.port} on {config.host} is in use: pick another --port")
    server = start(config, log_path)
    try:
        wait_healthy(server, health_timeout_s, poll_s)
    except BaseException:  # LaunchError, Ctrl-C: never leave a half-started server behind
        server.stop(timeout_s=10)
        raise
    return server


def start(config: VllmServeConfig, log_path: Path) -> VllmProcess:
    """Start the process (in its own session, output to `log_path`) without waiting."""
    command = vllm_command(config)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=vllm_environment(gpus=config.gpus),
                start_new_session=True,
            )
        except OSError as exc:
            raise LaunchError(
                f"cannot start {command[0]!r} ({exc.strerror}): install vLLM 0.33 in its own "
                "venv and pass --vllm-bin PATH, or run the official image with --docker IMAGE"
            ) from None
    return VllmProcess(process, config.url, log_path, redacted(command))


def wait_healthy(server: VllmProcess, timeout_s: float, poll_s: float = 0.5) -> None:
    """Return once GET /health answers 200; LaunchError with the log's tail otherwise."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as http:
        while (code := server.process.poll()) is None:
            try:
                if http.get(f"{server.url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"vLLM was not healthy at {server.url}/health within {timeout_s:g} s; "
                    f"last lines of {server.log_path}:\n{log_tail(server.log_path)}"
                )
            time.sleep(poll_s)
    raise LaunchError(
        f"vLLM at {server.url} exited with code {code} before becoming healthy; last lines of "
        f"{server.log_path}:\n{log_tail(server.log_path)}"
    )


def _vllm_error(response: httpx.Response) -> bool:
    """Whether the body is vLLM's own error shape, {"error": {...}}, as opposed to a framework
    404 for a route that does not exist."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


class AdapterClient:
    """Loads and unloads LoRA adapters on a running server (runtime adapter routes)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0):
        self.base_url = normalise_base_url(base_url)
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=timeout_s,
        )
        self.published: str | None = None  # the adapter name publish() loaded last

    async def _post(self, route: str, body: dict[str, object], action: str) -> None:
        try:
            response = await self._http.post(route, json=body)
        except httpx.HTTPError as exc:
            raise AdapterTransientError(
                f"cannot reach {self.base_url} to {action}: {exc!r}"
            ) from None
        if response.status_code == 200:
            return
        problem = f"{self.base_url} could not {action} (HTTP {response.status_code})"
        if response.status_code == 404 and not _vllm_error(response):
            # FastAPI's own 404 ({"detail": "Not Found"}): the route itself is absent.
            raise AdapterError(
                f"{self.base_url} has no {route} route, so it cannot {action}: start vLLM with "
                f"{RUNTIME_LORA_ENV}=1 and --enable-lora (`toolgym vllm serve` does both)"
            )
        message = server_message(response)
        if response.status_code >= 500 or _NOT_VISIBLE in message:
            raise AdapterTransientError(f"{problem}: {message}")
        raise AdapterError(f"{problem}: {message}")

    async def load(self, name: str, path: str | Path, *, inplace: bool = False) -> None:
        """The path must be readable by the server process (mount it when it runs in docker)."""
        body: dict[str, object] = {"lora_name": name, "lora_path": str(Path(path).resolve())}
        if inplace:
            body["load_inplace"] = True
        await self._post("/v1/load_lora_adapter", body, f"load adapter {name!r} from {path}")

    async def unload(self, name: str) -> None:
        await self._post("/v1/unload_lora_adapter", {"lora_name": name}, f"unload {name!r}")

    async def list_models(self) -> list[str]:
        """The base model and every loaded adapter, by the names requests use."""
        try:
            response = await self._http.get("/v1/models")
            response.raise_for_status()
            return [str(card["id"]) for card in response.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise AdapterError(f"cannot list models at {self.base_url}: {exc!r}") from None

    async def publish(self, path: str | Path, version_name: str) -> str:
        """Serve the adapter at `path` as `version_name`, then unload the previous version.

        Publish between rollout phases: a request for the previous name that is still in
        flight, or sent later, fails (404) once it is unloaded. Then `policy.set_model(name)`.
        """
        await self.load(version_name, path)
        previous, self.published = self.published, version_name
        if previous and previous != version_name:
            try:
                await self.unload(previous)
            except AdapterError as exc:
                raise AdapterError(
                    f"published {version_name!r}, but the previous version stays loaded: {exc}"
                ) from None
        return version_name

    async def aclose(self) -> None:
        await self._http.aclose()
