"""A run's environment shipped as a plugin, as a user ships one: a distribution on PYTHONPATH
with a `toolgym.envs` entry point, so every process a launcher starts registers it on
`import envs` (test_distributed_run.py, test_fsdp_run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TOOLGYM = str(Path(sys.executable).with_name("toolgym"))
NOOP_TOOL = {
    "type": "function",
    "function": {"name": "noop", "description": "Does nothing.", "parameters": {}},
}
_REGISTER = """
from envs.tool_env import make_tool_env


def make_env(**kwargs):
    return make_tool_env(grader=GRADER(), tools_url="http://unused", **kwargs)


def register():
    import gymnasium as gym

    gym.register("ENV_ID", entry_point=make_env, nondeterministic=True)
"""


def write_plugin(root: Path, module: str, env_id: str, grader: str, grader_class: str) -> Path:
    """`module` registering `env_id` with `grader` (source defining `grader_class`, with
    `GradeResult` and `verdict_for` in scope); returns the directory to put on PYTHONPATH."""
    plugin = root / "plugin"
    info = plugin / f"{module}-0.0.dist-info"
    info.mkdir(parents=True)
    head = "from envs.graders.base import GradeResult, verdict_for\n"
    tail = _REGISTER.replace("GRADER", grader_class).replace("ENV_ID", env_id)
    (plugin / f"{module}.py").write_text(head + grader + tail)
    name = module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[toolgym.envs]\n{module} = {module}:register\n")
    return plugin


def write_rows(path: Path, prefix: str, prompt: str, answer: str, count: int) -> None:
    """`count` rows offering the no-op tool; `prompt` gets the row's number."""
    rows = [
        {"id": f"{prefix}{i}", "prompt": f"{prompt} ({i}).", "reference_answer": answer,
         "tools": [NOOP_TOOL], "metadata": {"task_type": prefix, "difficulty": "easy"}}
        for i in range(count)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def run_env(plugin: Path) -> dict[str, str]:
    """The environment the run's processes need: the plugin importable, one thread each."""
    path = os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def run_toolgym(
    env: dict[str, str], timeout_s: float, *args: str
) -> subprocess.CompletedProcess[str]:
    """`toolgym ARGS` in the run's environment, its output captured."""
    return subprocess.run(
        [TOOLGYM, *args], capture_output=True, text=True, timeout=timeout_s, env=env
    )
