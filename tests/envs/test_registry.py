"""Adding environments without touching this repository: plugins, YAML files, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import pytest

import envs
from envs.data.build import build_dataset
from envs.errors import EnvConfigError
from testkit import TOKENS, LiveServer

TOOLGYM = str(Path(sys.executable).with_name("toolgym"))


def toolgym(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOOLGYM, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def val_rows(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rows")
    build_dataset(corpus_dir, out, seed=0)
    return out / "val.jsonl"


def test_an_installed_plugin_package_registers_its_environment(tmp_path: Path) -> None:
    package = tmp_path / "acme-plugin"
    package.mkdir()
    (package / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "toolgym-acme-plugin"
        version = "0.1.0"
        [project.entry-points."toolgym.envs"]
        acme = "acme_envs:register"
        [tool.setuptools]
        py-modules = ["acme_envs"]
    """)
    )
    (package / "acme_envs.py").write_text(
        textwrap.dedent("""
        import gymnasium

        def register():
            gymnasium.register(id="acme/InvoicesQA-v0", entry_point="envs.tool_env:make_tool_env",
                               kwargs={"limits": {"max_tool_calls": 6}})
    """)
    )
    site = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(site),
            str(package),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": str(site)}
    listing = toolgym("envs", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line.split()[1] for line in listing.stdout.splitlines()}
    assert lines["acme/InvoicesQA-v0"] == "plugin:toolgym-acme-plugin"
    assert lines["toolgym/FilingsQA-v0"] == "builtin"
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import envs, gymnasium; print(gymnasium.registry['acme/InvoicesQA-v0'].kwargs)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert "max_tool_calls" in probe.stdout, probe.stderr


def write_yaml(path: Path, dataset: Path, url: str, **extra: object) -> Path:
    spec = {
        "id": "acme/FilingsYaml-v0",
        "dataset": str(dataset),
        "tools_url": url,
        "token_env": "ACME_TOOLS_TOKEN",
        "grader": {"type": "numeric", "tolerance_rel": 0.01},
        "limits": {"max_tool_calls": 5, "max_turns": 6},
        **extra,
    }
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def test_a_yaml_file_defines_a_working_environment(
    tmp_path: Path, val_rows: Path, http_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_TOOLS_TOKEN", TOKENS[1])
    env_id = envs.register_yaml(write_yaml(tmp_path / "acme.yaml", val_rows, http_server.url))
    assert (env_id, f"yaml:{tmp_path / 'acme.yaml'}") in [
        (e.id, e.source) for e in envs.list_envs()
    ]
    env = gym.make(env_id)
    obs, _info = env.reset(seed=0)
    assert obs[1]["role"] == "user"
    observation, *_ = env.step(
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "list", "arguments": "{}"}}
            ],
        }
    )
    assert observation[0]["content"].startswith("352 documents")  # the token from ACME_TOOLS_TOKEN
    assert env.unwrapped.limits.max_tool_calls == 5  # type: ignore[attr-defined]
    env.close()


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"id": "no-namespace"}, "id"),
        ({"transport": "carrier-pigeon"}, "transport"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_yaml_file_names_the_key(
    tmp_path: Path, val_rows: Path, change: dict[str, object], mentions: str
) -> None:
    path = write_yaml(tmp_path / "bad.yaml", val_rows, "http://127.0.0.1:1", **change)
    with pytest.raises(EnvConfigError, match=mentions):
        envs.register_yaml(path)


def test_envs_list_shows_yaml_sources(tmp_path: Path, val_rows: Path) -> None:
    path = write_yaml(tmp_path / "listed.yaml", val_rows, "http://127.0.0.1:1")
    result = toolgym("envs", "list", "--yaml", str(path))
    assert result.returncode == 0, result.stderr
    assert ["acme/FilingsYaml-v0", f"yaml:{path}"] in [
        line.split() for line in result.stdout.splitlines()
    ]
    assert "toolgym/TatQA-v0" in result.stdout


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("842.5 million", "1.0"),
        ("$842,500,000", "1.0"),
        ("about 842 million", "1.0"),
        ("900 million", "0.0"),
    ],
)
def test_toolgym_grade_prints_the_score_last(answer: str, score: str) -> None:
    result = toolgym("grade", "--reference", "$842.5 million", "--answer", answer)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == score


def test_data_build_and_validate_from_the_cli(corpus_dir: Path, tmp_path: Path) -> None:
    built = toolgym("data", "build", "--corpus", str(corpus_dir), "--out", str(tmp_path))
    assert built.returncode == 0, built.stderr
    ok = toolgym(
        "data",
        "validate",
        str(tmp_path / "train.jsonl"),
        str(tmp_path / "val.jsonl"),
        "--corpus",
        str(corpus_dir),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "broken.jsonl"
    lines = (tmp_path / "val.jsonl").read_text().splitlines()
    broken.write_text("\n".join([lines[0], "{not json", lines[0]]) + "\n")
    bad = toolgym("data", "validate", str(broken), "--corpus", str(corpus_dir))
    assert bad.returncode == 1
    assert "broken.jsonl:2" in bad.stdout + bad.stderr
