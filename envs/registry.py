"""Where environments come from: built in, installed plugins, and YAML files.

- Built in: `toolgym/FilingsQA-v0` and `toolgym/TatQA-v0`, registered on `import envs`.
- Plugins: any installed distribution that declares an entry point in the group
  `toolgym.envs`; the entry point is a function that calls `gymnasium.register(...)`.
- YAML: a file describing a no-code environment (dataset, tool server, token variable,
  grader, limits); `register_yaml(path)`, or list files/directories in `TOOLGYM_ENVS`. The
  tool server may be any MCP server: a URL (streamable HTTP) or a command (stdio).
`list_envs()` reports every registered toolgym environment with where it came from.

Tokens: the built-in environments present the first token in TOOL_BEARER to toolgym's own
servers. Any other environment gets only the token it names: a YAML file's `token_env`
variable (required to be set once named), or, without `token_env`, no Authorization header,
which is warned about once per environment id.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from envs.errors import EnvConfigError, yaml_problem

if TYPE_CHECKING:
    from envs.tool_env import ToolEnv

PLUGIN_GROUP = "toolgym.envs"
# The variable toolgym's own servers take their tokens from; only the built-ins present it.
TOOLGYM_TOKEN_ENV = "TOOL_BEARER"
YAML_PATH_ENV = "TOOLGYM_ENVS"
TATQA_SYSTEM_PROMPT = (
    "You answer questions about excerpts of real annual reports. Each question names the report "
    "document to use; read it with read(path), or find passages with search(query). Answer "
    "with the figure and its scale (thousand, million, percent) or the exact words asked for. "
    "When you know the answer, reply without calling a tool, e.g. 'Answer: -12.5 million'."
)


@dataclass(frozen=True)
class EnvEntry:
    id: str
    source: str  # "builtin", "plugin:<distribution>", "yaml:<file>"
    entry_point: str


_SOURCES: dict[str, str] = {}


def _register(env_id: str, source: str, entry_point: Any, kwargs: dict[str, Any]) -> None:
    gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs, nondeterministic=True)
    _SOURCES[env_id] = source


def register_builtin() -> None:
    # The built-ins talk to toolgym's own servers, so they, and only they, present TOOL_BEARER.
    own_token = {"token_env": TOOLGYM_TOKEN_ENV}
    _register("toolgym/FilingsQA-v0", "builtin", "envs.tool_env:make_tool_env", own_token)
    _register(
        "toolgym/TatQA-v0",
        "builtin",
        "envs.tool_env:make_tool_env",
        {**own_token, "system_prompt": TATQA_SYSTEM_PROMPT, "grader": {"type": "auto"}},
    )


def load_plugins() -> list[str]:
    """Run every `toolgym.envs` entry point; a broken plugin warns, it does not break us."""
    problems = []
    for point in entry_points(group=PLUGIN_GROUP):
        before = set(gym.registry)
        try:
            point.load()()
        except Exception as exc:  # a third party's bug must not stop `import envs`
            problems.append(f"{point.value}: {exc!r}")
            warnings.warn(f"toolgym plugin {point.name} failed to register: {exc!r}", stacklevel=2)
            continue
        dist = point.dist.name if point.dist else point.module
        for env_id in set(gym.registry) - before:
            _SOURCES[env_id] = f"plugin:{dist}"
    return problems


class YamlEnvSpec(BaseModel):
    """A no-code environment. Relative `dataset` and `cwd` paths are relative to the YAML file.

    The tool server is either a URL (`transport: http` or `mcp`, with `headers` for mcp) or a
    stdio MCP server started from `command` (with `env`, `cwd`). `tools_url` may list several
    replicas of one stateless server (a YAML list, or comma-separated), balanced by the client
    (`envs.replicas`); they all get the same token. Which keys go with which transport is
    checked by `envs.server_settings.ServerSettings`, so YAML and kwargs get the same one-line
    errors."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[\w.-]+/[\w.-]+-v\d+$")
    dataset: Path
    tools_url: str | list[str] | None = None  # one URL, or replicas of the same server
    transport: str = Field(default="http", pattern=r"^(http|mcp|stdio)$")
    # No default: a third party's server must never receive toolgym's TOOL_BEARER unasked.
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    headers: dict[str, str] = Field(default_factory=dict)
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    isolation: str = Field(default="pool", pattern=r"^(pool|episode)$")
    tools: list[str] | None = None
    grader: dict[str, Any] = Field(default_factory=lambda: {"type": "auto"})
    limits: dict[str, int] = Field(default_factory=dict)
    system_prompt: str | None = None


class NoTokenWarning(UserWarning):
    """A third-party environment's tool calls go out without an Authorization header."""


_WARNED_NO_TOKEN: set[str] = set()


def yaml_env_token(env_id: str, token_env: str | None) -> str | None:
    """The token a YAML environment presents: the first one in its `token_env` variable.

    A named variable that is empty is an error, not a silent unauthenticated run. Without
    `token_env` there is no token, and that is said once per environment id, not per episode
    (the rollout engine makes hundreds of environments).
    """
    if token_env is None:
        if env_id not in _WARNED_NO_TOKEN:
            _WARNED_NO_TOKEN.add(env_id)
            warnings.warn(
                f"environment {env_id} has no token configured (token_env unset): "
                "its tool calls carry no Authorization header",
                NoTokenWarning,
                stacklevel=2,
            )
        return None
    from envs.client import first_token

    token = first_token(token_env)
    if token is None:
        raise EnvConfigError(
            f"environment {env_id}: its token variable {token_env} is empty or unset "
            f"(set {token_env}=<token>, or remove token_env to send no token)"
        )
    return token


def make_yaml_env(env_id: str, token_env: str | None, **kwargs: Any) -> ToolEnv:
    """Entry point for YAML environments: the token is settled when the env is made."""
    from envs.tool_env import make_tool_env

    if kwargs.get("transport") == "stdio":  # a pipe has no Authorization header to fill
        kwargs.pop("token", None)
        return make_tool_env(**kwargs)
    token = kwargs.pop("token", None) or yaml_env_token(env_id, token_env)
    return make_tool_env(token=token, **kwargs)


def register_yaml(path: Path, *, token: str | None = None) -> str:
    """Register the environment `path` describes; returns its id. `token`, when given, is the
    one its episodes present, instead of the one in its `token_env` variable: a program that
    started the tool server itself hands the token over without going through os.environ."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = YamlEnvSpec.model_validate(raw)
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvConfigError(f"{path}: cannot read environment file: {exc}") from exc
    except yaml.YAMLError as exc:
        raise EnvConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise EnvConfigError(f"{path}: {problems}") from exc
    _check_settings(path, spec)
    kwargs: dict[str, Any] = {
        "env_id": spec.id,
        "token_env": spec.token_env,
        "dataset": str(_beside(path, spec.dataset)),
        "transport": spec.transport,
        "grader": spec.grader,
        "limits": spec.limits,
        **_server_kwargs(path, spec),
    }
    if spec.system_prompt:
        kwargs["system_prompt"] = spec.system_prompt
    if token is not None:
        kwargs["token"] = token  # make_yaml_env takes it before looking at token_env
    _register(spec.id, f"yaml:{path}", "envs.registry:make_yaml_env", kwargs)
    return spec.id


def _beside(path: Path, target: Path) -> Path:
    return target if target.is_absolute() else path.parent / target


def _server_kwargs(path: Path, spec: YamlEnvSpec) -> dict[str, Any]:
    """The tool-server keys the file sets (defaults left out, so the registered kwargs show
    only what the file says); `cwd` made relative to the file."""
    kwargs: dict[str, Any] = {
        "tools_url": spec.tools_url,
        "headers": spec.headers,
        "command": spec.command,
        "env": spec.env,
        "cwd": str(_beside(path, spec.cwd)) if spec.cwd is not None else None,
        "tools": spec.tools,
    }
    if spec.isolation != "pool":
        kwargs["isolation"] = spec.isolation
    return {key: value for key, value in kwargs.items() if value}


def _check_settings(path: Path, spec: YamlEnvSpec) -> None:
    """The tool server, grader and limits are only used when an episode is made; check them at
    load, so a typo is reported with its file now, not as a failure in the middle of a run."""
    from envs.episode import parse_limits
    from envs.grading import check_grader
    from envs.server_settings import ServerSettings

    try:
        if spec.transport == "stdio" and spec.token_env:
            raise EnvConfigError(
                "token_env: a stdio server gets no token; pass what it needs with env: {VAR: ...}"
            )
        ServerSettings.of(
            spec.transport,
            spec.tools_url,
            headers=spec.headers,
            command=spec.command,
            env=spec.env,
            cwd=spec.cwd,
            isolation=spec.isolation,
            tools=spec.tools,
        )
        check_grader(spec.grader)
        parse_limits(spec.limits)
    except EnvConfigError as exc:
        raise EnvConfigError(f"{path}: {exc}") from None


def load_yaml_from_env() -> list[str]:
    """Register the YAML files (or directories of them) listed in TOOLGYM_ENVS."""
    registered = []
    for entry in filter(None, os.environ.get(YAML_PATH_ENV, "").split(os.pathsep)):
        location = Path(entry)
        files = sorted(location.glob("*.y*ml")) if location.is_dir() else [location]
        for file in files:
            try:
                registered.append(register_yaml(file))
            except EnvConfigError as exc:  # one bad file must not break `import envs`
                warnings.warn(f"{YAML_PATH_ENV}: skipped {exc}", stacklevel=2)
    return registered


def list_envs() -> list[EnvEntry]:
    return [
        EnvEntry(env_id, source, str(gym.registry[env_id].entry_point))
        for env_id, source in sorted(_SOURCES.items())
        if env_id in gym.registry
    ]
